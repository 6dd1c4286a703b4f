"""`sdk.onnx_export` refusals, manifest contents, and the `plume export` command."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from coordinator.cli import main
from mobile_sim.models import build_model
from sdk.flat import spec_from_module
from sdk.onnx_export import (
    ExportError,
    UnsupportedLayerError,
    check_supported,
    export_training_artifacts,
)


class _OwnsParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x * self.scale)
        return out


@pytest.mark.parametrize(
    ("model", "where", "layer"),
    [
        (
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten()),
            "'1'",
            "BatchNorm2d",
        ),
        (nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1)), "'1'", "Dropout"),
        (nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 3))), "'0.1'", "LSTM"),
        (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), "'0'", "Conv2d"),
        (nn.Sequential(nn.Conv2d(2, 2, 3, padding="same")), "'0'", "Conv2d"),
        (nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), "'0'", "MaxPool2d"),
        (nn.Sequential(nn.AvgPool2d(2, divisor_override=3)), "'0'", "AvgPool2d"),
        (nn.Sequential(nn.Embedding(5, 2, max_norm=1.0)), "'0'", "Embedding"),
        (_OwnsParameter(), "'<root>'", "_OwnsParameter"),
    ],
)
def test_unsupported_layers_are_refused_by_name(model: nn.Module, where: str, layer: str) -> None:
    # Execute
    with pytest.raises(UnsupportedLayerError) as info:
        check_supported(model)

    # Assert: the message names the layer type and its path, and lists what is supported.
    message = str(info.value)
    assert message.startswith(f"{layer} at {where}")
    assert "supported: Linear, Conv2d" in message


def test_export_refuses_before_tracing(tmp_path: Path) -> None:
    # Prepare
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))

    # Execute
    with pytest.raises(UnsupportedLayerError, match="BatchNorm1d at '1'"):
        export_training_artifacts(model, torch.randn(3, 4), tmp_path / "out")

    # Assert: nothing was written
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "hinge"}, "unknown loss"),
        ({"optimizer": "adam"}, "unknown optimizer"),
        ({"optimizer": "momentum", "momentum": 1.0}, "momentum must be"),
        ({"momentum": float("nan")}, "momentum must be"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ExportError, match=match):
        export_training_artifacts(nn.Linear(2, 2), torch.randn(3, 2), tmp_path, **kwargs)  # type: ignore[arg-type]


def test_a_batch_of_one_is_refused_for_tracing(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="at least 2"):
        export_training_artifacts(nn.Linear(2, 2), torch.randn(1, 2), tmp_path)


def test_frozen_parameters_are_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    with pytest.raises(ExportError, match="frozen"):
        check_supported(model)


def test_supported_zoo_models_pass_the_check() -> None:
    for name in ("mnist_cnn", "mlp", "digits_mlp"):
        check_supported(build_model(name))


def test_manifest_follows_the_flat_layout(tmp_path: Path) -> None:
    # Prepare
    model = build_model("digits_mlp")

    # Execute
    result = export_training_artifacts(
        model, torch.randn(4, 64), tmp_path, optimizer="momentum", model_name="digits_mlp"
    )

    # Assert: same names, shapes and order as sdk.flat (named_parameters), and the files exist.
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert result.spec == spec_from_module(model)
    assert manifest["spec"] == spec_from_module(model).to_json()
    assert manifest["spec_fingerprint"] == result.spec.fingerprint.hex()
    assert manifest["num_params"] == 2410
    assert manifest["model"] == "digits_mlp"
    assert manifest["optimizer"] == {"name": "momentum", "momentum": 0.9}
    assert manifest["param_inputs"] == ["p0", "p1", "p2", "p3"]
    assert manifest["state_inputs"] == ["m0", "m1", "m2", "m3"]
    assert manifest["x"] == {"name": "x", "dtype": "float32", "shape": ["batch", 64]}
    assert manifest["y"] == {"name": "y", "dtype": "int64", "shape": ["batch"]}
    train = onnx.load(str(tmp_path / "train_step.onnx"))
    assert [i.name for i in train.graph.input] == [
        *manifest["param_inputs"],
        *manifest["state_inputs"],
        "x",
        "y",
        "lr",
    ]
    assert [o.name for o in train.graph.output] == manifest["train_outputs"]
    batch_dim = train.graph.input[-3].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param  # symbolic: any batch size, including a last partial batch
    infer = onnx.load(str(tmp_path / "infer.onnx"))
    assert [i.name for i in infer.graph.input] == [*manifest["param_inputs"], "x"]
    assert manifest["files"]["infer"]["bytes"] == (tmp_path / "infer.onnx").stat().st_size


def test_cli_export_writes_the_artifacts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["export", "--model", "digits_mlp", "--out", str(tmp_path), "--loss", "mse"])

    # Assert
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["params"] == 2410
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["loss"] == "mse"
    assert manifest["y"]["dtype"] == "float32"
    assert summary["train_step_bytes"] == (tmp_path / "train_step.onnx").stat().st_size


def test_cli_export_rejects_an_unknown_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", "--model", "resnet50", "--out", str(tmp_path)])
    assert code == 2
    assert "unknown model" in capsys.readouterr().err
