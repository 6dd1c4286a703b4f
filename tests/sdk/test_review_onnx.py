"""Adversarial review of the constrained-device path: export edge cases and untrusted artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdk.onnx_export import export_training_artifacts
from sdk.ort import OrtTrainer

LR = 0.05


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a64 - b64)) / max(float(np.linalg.norm(b64)), 1e-30)


def _valid_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding="valid"), nn.Flatten(), nn.Linear(2 * 5 * 5, 4))


@pytest.fixture(scope="module")
def valid_conv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Conv2d with ``padding="valid"`` (ATen passes its padding as one value, [0])."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("valid_conv")
    export_training_artifacts(_valid_conv(), torch.randn(4, 1, 7, 7), out)
    return out


def test_valid_padding_conv_loads_and_matches_torch(valid_conv_dir: Path) -> None:
    # Prepare: batches of 1 and 3 (neither the export's 4).
    trainer = OrtTrainer.from_dir(valid_conv_dir)
    model = _valid_conv()
    start = [p.detach().numpy().copy() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    rng = np.random.default_rng(0)
    params, losses = [p.copy() for p in start], []
    for b in (1, 3):
        x = rng.standard_normal((b, 1, 7, 7)).astype(np.float32)
        y = rng.integers(0, 4, b)

        # Execute
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        got, params, _ = trainer.step(params, [], x, y, LR)
        losses.append((got, float(loss.detach())))

    # Assert
    for g, w, s in zip(params, model.parameters(), start, strict=True):
        assert _rel(g - s, w.detach().numpy() - s) < 1e-4
    for got, want in losses:
        assert got == pytest.approx(want, rel=1e-5)
