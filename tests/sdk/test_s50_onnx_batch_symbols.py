"""An example batch equal to another size of the model exports a dynamic batch (helper-s50's
review, finding 1).

The symbolic tracer gave equal sizes one symbol ("duck shaping"): with a batch of 4 and a
LayerNorm(4) over [B, T, 4], or a batch equal to an LSTM's hidden size, the exported x had a
fixed batch, and the export's own check at a batch of 1 ended in onnxruntime's raw
`InvalidArgument` (`plume export` printed a traceback). Every size is now traced as a symbol of
its own; a graph whose batch still came out fixed is an `ExportError` naming the fix, and any
onnxruntime failure in the export's number check is one too.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from coordinator.cli import main
from mobile_sim import models
from mobile_sim.models_text import LSTMLayer
from sdk import onnx_export
from sdk.flat import get_flat_params
from sdk.onnx_export import ExportError, export_training_artifacts
from sdk.ort import OrtTrainer
from sdk.trainer import TorchTrainer


def _token_ln() -> nn.Module:
    """Token ids [B, 6] -> LayerNorm(4) over [B, 6, 4]: a batch of 4 was fixed."""
    return nn.Sequential(nn.Embedding(20, 4), nn.LayerNorm(4), nn.Flatten(), nn.Linear(24, 20))


def _feature_ln() -> nn.Module:
    """Features [B, 6, 5] -> LayerNorm(4) over [B, 6, 4]: a batch of 4 was fixed."""
    return nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Flatten(), nn.Linear(24, 3))


class _Recurrent(nn.Module):
    """The zoo LSTM's layer at toy sizes (hidden 4, 2 steps): its state is zeros [B, hidden],
    so a batch of 4 was fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 3)
        self.lstm = LSTMLayer(3, 4)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.lstm(self.embed(x))[:, -1])
        return out


_CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor], int]] = {
    "token_layernorm": (_token_ln, lambda b: torch.randint(0, 20, (b, 6)), 20),
    "feature_layernorm_3d": (_feature_ln, lambda b: torch.randn(b, 6, 5), 3),
    "lstm_hidden": (_Recurrent, lambda b: torch.randint(0, 10, (b, 2)), 10),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_a_batch_equal_to_a_layer_size_exports_a_dynamic_batch(tmp_path: Path, case: str) -> None:
    # Prepare: an example batch of 4, the width of a layer of each model
    torch.manual_seed(0)
    torch.set_num_threads(1)
    build, example, classes = _CASES[case]
    model = build()

    # Execute
    result = export_training_artifacts(model, example(4), tmp_path)

    # Assert: x is dynamic, and the device trains batches of 3 and 1 as torch does
    assert result.manifest["x"]["shape"][0] == "batch"
    trainer = OrtTrainer.from_dir(tmp_path)
    x = example(7).numpy()
    y = np.arange(7) % classes
    flat = get_flat_params(model).copy()
    got = trainer.train(flat, x, y, epochs=1, batch_size=3, lr=0.1, rng=np.random.default_rng(0))
    want = TorchTrainer(copy.deepcopy(model)).train(
        flat, x, y, epochs=1, batch_size=3, lr=0.1, rng=np.random.default_rng(0)
    )
    assert got.num_examples == want.num_examples == 7
    np.testing.assert_allclose(got.params, want.params, rtol=0, atol=1e-5)


def test_a_batch_the_trace_fixes_anyway_is_an_export_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a torch without the switch (duck shaping on), as before the fix
    monkeypatch.setattr(onnx_export, "_own_symbols", contextlib.nullcontext, raising=False)
    torch.manual_seed(0)

    # Execute / Assert: refused with the shapes and an example batch size to use
    with pytest.raises(ExportError, match=r"fixed batch size \(x \[4, 6\], y \[4\]; traced at a"):
        export_training_artifacts(_token_ln(), torch.randint(0, 20, (4, 6)), tmp_path / "o")
    assert not (tmp_path / "o").exists()


class _ConstantBatch(nn.Module):
    """A forward that reshapes to a constant batch of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.a(x.reshape(4, 8))
        return out


def test_a_forward_fixing_the_batch_is_an_export_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"fixed batch size .*\(a reshape to a constant batch"):
        export_training_artifacts(_ConstantBatch(), torch.randn(4, 8), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_an_onnxruntime_failure_in_the_number_check_is_an_export_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a fixed batch that gets past the shape check, so the graphs run at a batch of 1
    monkeypatch.setattr(onnx_export, "_own_symbols", contextlib.nullcontext, raising=False)
    monkeypatch.setattr(onnx_export, "_fixed_batch", lambda graph, names: [], raising=False)
    torch.manual_seed(0)

    # Execute / Assert: onnxruntime's error, as an ExportError naming the graph and the batch
    with pytest.raises(
        ExportError, match=r"^infer: onnxruntime cannot run the exported graph at a batch of 1 "
    ) as info:
        export_training_artifacts(_token_ln(), torch.randint(0, 20, (4, 6)), tmp_path / "o")
    assert "INVALID_ARGUMENT" in str(info.value)
    assert not (tmp_path / "o").exists()


def test_plume_export_at_a_batch_equal_to_a_layer_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the reviewer's plugin model, exported at --batch-size 4 (a traceback, status 1)
    monkeypatch.setitem(models.MODELS, "s50_tok_ln", _token_ln)
    out = tmp_path / "art"
    flags = ["--input-shape", "6", "--input-dtype", "int64", "--batch-size", "4"]

    # Execute
    code = main(["export", "--model", "s50_tok_ln", *flags, "--out", str(out), "--no-progress"])

    # Assert
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["x"] == {"name": "x", "dtype": "int64", "shape": ["batch", 6], "vocab": 20}
    OrtTrainer.from_dir(out)


class _CentreFrom8(nn.Module):
    """Centres its hidden layer of width 4 over the batch from a batch of 8 on."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if x.shape[0] >= 8:
            h = h - h.mean(0, keepdim=True)
        out: torch.Tensor = self.b(h)
        return out


def test_the_batch_guards_are_read_with_every_size_its_own_symbol(tmp_path: Path) -> None:
    # x's and y's batch are two symbols the trace equates after the branch's guard: the guard
    # is still read as one on the batch (at a batch of 4, the hidden layer's width too)
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"traced at a batch of 4, where the tracer assumed"):
        export_training_artifacts(_CentreFrom8(), torch.randn(4, 8), tmp_path / "o")


def test_a_per_position_loss_adds_no_guard_on_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its reshapes equate y's batch times positions with x's: true for one batch dimension
    seen: list[dict[int, str]] = []
    real = onnx_export._batch_guard_sizes

    def spy(*args: object) -> dict[int, str]:
        sizes = real(*args)  # type: ignore[arg-type]
        seen.append(sizes)
        return sizes

    monkeypatch.setattr(onnx_export, "_batch_guard_sizes", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(9, 4), nn.Linear(4, 3))
    export_training_artifacts(model, torch.randint(0, 9, (4, 5)), tmp_path)
    assert seen == [{}]
