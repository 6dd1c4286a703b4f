"""`export_training_artifacts` checks the exported graphs' numbers against torch at batch sizes
other than the traced one (helper-194's finding: a forward branching on the batch size was
exported with the branch of the example's batch, so a device's last partial batch of one
trained another model than torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdk.onnx_export import ExportError, export_training_artifacts
from sdk.ort import OrtTrainer
from sdk.trainer import TorchTrainer


class _CentreOverBatch(nn.Module):
    """Centres the hidden layer over the batch, except for a batch of one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if x.shape[0] > 1:
            h = h - h.mean(0, keepdim=True)
        out: torch.Tensor = self.b(h)
        return out


class _UpToFour(nn.Module):
    """Scales its output up to the example's batch size: right at 1, wrong at 5."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.a(x)
        return out * 2.0 if x.shape[0] <= 4 else out


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_batch_size_branch_is_refused(tmp_path: Path, optimizer: str) -> None:
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"at a batch of 1 differs from torch's") as info:
        export_training_artifacts(
            _CentreOverBatch(), torch.rand(4, 5), tmp_path / "out", optimizer=optimizer
        )
    assert "x.shape[0]" in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_branch_at_the_traced_size_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"at a batch of 5 differs from torch's"):
        export_training_artifacts(_UpToFour(), torch.rand(4, 5), tmp_path / "out")


def test_plain_model_still_trains_as_torch_at_a_last_batch_of_one(tmp_path: Path) -> None:
    """A model without such a branch exports, and a last partial batch of one trains as in
    torch (7 examples in batches of 3)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    export_training_artifacts(model, torch.rand(4, 5), tmp_path)
    rng = np.random.default_rng(0)
    x = rng.random((7, 5), dtype=np.float32)
    y = rng.integers(0, 3, 7)
    p0 = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    ours = OrtTrainer.from_dir(tmp_path).train(
        p0, x, y, epochs=1, batch_size=3, lr=0.1, rng=np.random.default_rng(1)
    )
    theirs = TorchTrainer(model).train(
        p0, x, y, epochs=1, batch_size=3, lr=0.1, rng=np.random.default_rng(1)
    )
    a, b = ours.params - p0, theirs.params - p0
    assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)
