"""The figures docs/devices.md ("Text models (stretch)") quotes for the causal-attention
character model of `tests/sdk/test_onnx_shakespeare.py`: its parameter count, its artifacts'
sizes (decimal KB, as quoted) and its parity with torch after 1 and 50 steps.

Slow (the export takes ~12 s on the 2-core dev machine): `make test-all`, or
`pytest -m slow tests/sdk/test_h149_text_figures.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdk.onnx_export import export_training_artifacts
from sdk.ort import OrtTrainer
from tests.sdk.test_onnx_shakespeare import LR, SEQ, VOCAB, _model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("char_attention_figures")
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(0))
    result = export_training_artifacts(_model(), ids.float(), out)
    return out, result.manifest


def test_the_attention_model_has_the_quoted_parameters_and_artifact_sizes(
    exported: tuple[Path, dict],
) -> None:
    # Assert: "117,600 parameters ... a 60 KB train_step.onnx and a 26 KB infer.onnx"
    _, manifest = exported
    assert sum(p.numel() for p in _model().parameters()) == 117_600
    assert manifest["num_params"] == 117_600
    files = manifest["files"]
    assert round(files["train_step"]["bytes"] / 1000) == 60  # 59,944 on 2026-11-29
    assert round(files["infer"]["bytes"] / 1000) == 26  # 26,468
    assert manifest["x"]["vocab"] == VOCAB  # float ids, checked on the device


@pytest.mark.parametrize(("steps", "bound"), [(1, 2e-5), (50, 5e-5)])
def test_the_attention_models_updates_match_torch_within_the_quoted_bound(
    exported: tuple[Path, dict], steps: int, bound: float
) -> None:
    # Prepare: real Shakespeare windows (float32 ids), batches of 7, 1, 5 and 8
    from mobile_sim.datasets import load_shakespeare

    try:
        data = load_shakespeare(max_clients=20)
    except Exception as exc:  # DataError when the text is not on this machine
        pytest.skip(f"Shakespeare not available: {exc}")
    trainer = OrtTrainer.from_dir(exported[0])
    model = _model()
    start = [p.detach().numpy().copy() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    rng = np.random.default_rng(steps)

    # Execute
    params = [p.copy() for p in start]
    for i in range(steps):
        idx = rng.choice(len(data.x_train), [7, 1, 5, 8][i % 4], replace=False)
        x, y = data.x_train[idx], data.y_train[idx]
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
        _, params, _ = trainer.step(params, [], x, y, LR)

    # Assert: every tensor's update, relative to torch's (1 step: 5.8e-6, 50 steps: 1.8e-5
    # measured on the 2-core dev machine on 2026-11-29; the bounds are ~3x that)
    worst = 0.0
    for got, p, s in zip(params, model.parameters(), start, strict=True):
        want = p.detach().numpy() - s
        worst = max(worst, float(np.linalg.norm(got - s - want) / np.linalg.norm(want)))
    assert worst < bound
