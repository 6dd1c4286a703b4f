"""The export checks the model's output and `example_y` against the loss before tracing
(helper-s50's review, findings 2 and 3).

- An "mse" model with an output [B] exported, and `sdk.ort` then refused to load it (`logits
  ['batch'] need a batch and a static last dimension`): it is now an `ExampleInputError` with
  the fix ([B, 1]), as a "ce" model without a class dimension already was.
- A "ce" `example_y` holding a class the model does not have (5 of 3, or -1) traced in full,
  and the export then blamed the batch size (`the model's training step refuses a batch of 5
  (Target 5 is out of bounds.)`): it is now an `ExampleInputError` before tracing, which
  `plume export` reports as a usage error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from coordinator.cli import main
from mobile_sim import models
from sdk import onnx_export
from sdk.onnx_export import ExampleInputError, export_training_artifacts
from sdk.ort import OrtTrainer


class _Regression(nn.Module):
    """A regression model with one output per example, squeezed to [B] or kept as [B, 1]."""

    def __init__(self, squeeze: bool) -> None:
        super().__init__()
        self.squeeze = squeeze
        self.a = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.a(x)
        return out.squeeze(-1) if self.squeeze else out


def _no_trace(*args: object, **kwargs: object) -> None:
    raise AssertionError("traced an export that its checks refuse")


def test_an_mse_output_without_a_feature_dimension_is_refused_before_tracing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "_export", _no_trace)
    torch.manual_seed(0)
    with pytest.raises(ExampleInputError, match=r"outputs \[4\]: add a feature dimension") as info:
        export_training_artifacts(_Regression(True), torch.randn(4, 8), tmp_path / "o", loss="mse")
    assert info.value.reason == (
        "output shape [4]: loss 'mse' needs outputs [B, ..., F] with a feature dimension; "
        "add one, e.g. [B, 1]"
    )
    assert not (tmp_path / "o").exists()


def test_an_mse_output_with_a_feature_dimension_exports_and_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = export_training_artifacts(_Regression(False), torch.randn(4, 8), tmp_path, loss="mse")
    assert result.manifest["y"]["shape"] == ["batch", 1]
    OrtTrainer.from_dir(tmp_path)


def test_plume_export_reports_an_mse_output_without_features_as_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(models.MODELS, "s50_regression", lambda: _Regression(True))
    out = tmp_path / "art"
    flags = ["--input-shape", "8", "--loss", "mse", "--no-progress"]
    assert main(["export", "--model", "s50_regression", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plume export: error: an input of shape 8 (float32) does not fit ")
    assert "add one, e.g. [B, 1]" in err and err.count("\n") == 1, err
    assert not out.exists()


def _classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize(
    ("labels", "bad"), [([0, 1, 2, 5], 5), ([0, 1, 2, -1], -1), ([3, -100, 0, 1], 3)]
)
def test_an_example_y_with_a_class_the_model_lacks_is_refused_before_tracing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, labels: list[int], bad: int
) -> None:
    monkeypatch.setattr(onnx_export, "_export", _no_trace)
    torch.manual_seed(0)
    with pytest.raises(ExampleInputError) as info:
        export_training_artifacts(
            _classifier(), torch.randn(4, 8), tmp_path / "o", example_y=torch.tensor(labels)
        )
    assert str(info.value) == f"example_y does not fit the model: {info.value.reason}"
    assert info.value.reason == (
        f"example_y holds class {bad}, the model's output [4, 3] has 3 classes: labels must "
        f"be in [0, 3) (or -100, which is skipped)"
    )
    assert not (tmp_path / "o").exists()


def test_per_position_labels_are_checked_against_the_last_dimension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # [B, T, C] = [4, 5, 3]: a label of 3 at one position is past the classes
    monkeypatch.setattr(onnx_export, "_export", _no_trace)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(9, 4), nn.Linear(4, 3))
    labels = torch.zeros(4, 5, dtype=torch.int64)
    labels[2, 4] = 3
    with pytest.raises(ExampleInputError, match=r"holds class 3, the model's output \[4, 5, 3\]"):
        export_training_artifacts(
            model, torch.randint(0, 9, (4, 5)), tmp_path / "o", example_y=labels
        )


def test_an_example_y_in_range_with_skipped_labels_still_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    labels = torch.tensor([0, -100, 2, 1])
    result = export_training_artifacts(_classifier(), torch.randn(4, 8), tmp_path, example_y=labels)
    assert result.manifest["y"] == {"name": "y", "dtype": "int64", "shape": ["batch"]}
