"""`sdk.onnx_export` refusals, manifest contents, and the `plume export` command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from coordinator.cli import main
from mobile_sim.models import build_model
from sdk.flat import spec_from_module
from sdk.onnx_export import (
    ExampleInputError,
    ExportError,
    OutputError,
    UnsupportedLayerError,
    check_supported,
    check_training_mode,
    export_training_artifacts,
)
from sdk.ort import ArtifactError, load_manifest


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


# --- an example input that does not fit, and all-or-nothing writes ----------------------------


@pytest.mark.parametrize(
    ("x", "reason"),
    [
        (torch.randn(4, 3, 3), "cannot be multiplied"),  # digits_mlp takes [B, 64]
        (torch.zeros(4, 64, dtype=torch.int64), "dtype"),  # token ids into a Linear
    ],
    ids=["shape", "dtype"],
)
def test_an_example_input_that_does_not_fit_is_a_typed_error(
    tmp_path: Path, x: torch.Tensor, reason: str
) -> None:
    # Prepare
    model = build_model("digits_mlp")

    # Execute
    with pytest.raises(ExampleInputError) as info:
        export_training_artifacts(model, x, tmp_path / "out")

    # Assert: one clear line naming the input, torch's reason kept, and nothing written.
    message = str(info.value)
    dtype = str(x.dtype).removeprefix("torch.")
    assert message.startswith(f"example_x of shape {list(x.shape)} ({dtype}) does not fit")
    assert reason in info.value.reason and info.value.reason in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not (tmp_path / "out").exists()
    assert model.training


@pytest.mark.parametrize(
    ("model", "loss", "y", "match"),
    [
        (nn.Linear(6, 4), "ce", torch.zeros(4, 2, dtype=torch.int64), r"targets of shape \[4\]"),
        (nn.Linear(6, 4), "mse", torch.zeros(4, 1), r"targets of shape \[4, 4\]"),
        (nn.Linear(6, 4), "ce", torch.zeros(3, dtype=torch.int64), r"targets of shape \[4\]"),
        (nn.Sequential(nn.Linear(6, 1), nn.Flatten(0)), "ce", None, r"needs logits \[B, ..., C\]"),
    ],
    ids=["ce_labels_2d", "mse_broadcast", "batch_mismatch", "ce_without_classes"],
)
def test_targets_that_do_not_fit_the_output_are_refused_before_tracing(
    tmp_path: Path, model: nn.Module, loss: str, y: torch.Tensor | None, match: str
) -> None:
    # Before: a tracing error from deep inside torch, or artifacts sdk.ort refuses to load.
    with pytest.raises(ExampleInputError, match=match):
        export_training_artifacts(model, torch.randn(4, 6), tmp_path / "o", loss=loss, example_y=y)
    assert not (tmp_path / "o").exists()


def test_an_unwritable_output_folder_is_an_output_error(tmp_path: Path) -> None:
    # Prepare: --out under a regular file
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    # Execute
    with pytest.raises(OutputError, match="cannot create the output folder"):
        export_training_artifacts(nn.Linear(2, 2), torch.randn(3, 2), blocker / "a" / "b")

    # Assert
    assert blocker.read_text() == "not a folder"


def test_a_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the second rename into place fails (a full disk, a revoked permission).
    real_replace = os.replace
    calls = []

    def flaky_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    out = tmp_path / "new" / "out"

    # Execute
    with pytest.raises(OutputError, match="No space left on device"):
        export_training_artifacts(nn.Linear(2, 2), torch.randn(3, 2), out)

    # Assert: the folders this export created are gone again, with the file it had placed.
    assert len(calls) == 2
    assert not (tmp_path / "new").exists()


def test_a_failed_write_over_an_old_export_keeps_it_loadable_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a complete export, then a second one (another optimizer) whose manifest fails.
    out = tmp_path / "art"
    export_training_artifacts(nn.Linear(2, 2), torch.randn(3, 2), out)
    (out / "notes.txt").write_text("the user's own file")
    old_manifest = (out / "manifest.json").read_bytes()
    real_replace = os.replace

    def no_manifest(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "manifest.json":
            raise OSError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", no_manifest)

    # Execute
    with pytest.raises(OutputError, match="Permission denied"):
        export_training_artifacts(nn.Linear(2, 2), torch.randn(3, 2), out, optimizer="momentum")

    # Assert: no temporaries, the user's file kept, the old manifest kept, and its digests
    # refuse the new graphs instead of training a mix of the two exports.
    assert sorted(p.name for p in out.iterdir()) == [
        "infer.onnx",
        "manifest.json",
        "notes.txt",
        "train_step.onnx",
    ]
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert (out / "manifest.json").read_bytes() == old_manifest
    with pytest.raises(ArtifactError, match="SHA-256|bytes on disk"):
        load_manifest(out)


def test_export_into_an_existing_folder_keeps_other_files(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "notes.txt").write_text("keep me")

    # Execute
    result = export_training_artifacts(nn.Linear(2, 2), torch.randn(3, 2), tmp_path)

    # Assert: the three artifacts and the user's file, no temporaries, and a loadable set.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "infer.onnx",
        "manifest.json",
        "notes.txt",
        "train_step.onnx",
    ]
    assert load_manifest(tmp_path).spec == result.spec


def test_check_training_mode_reports_a_misfit_input() -> None:
    with pytest.raises(ExampleInputError, match=r"example_x of shape \[2, 5\]"):
        check_training_mode(nn.Linear(4, 2), torch.randn(2, 5))


def test_cli_export_reports_an_input_dtype_the_model_cannot_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: token ids into the digits MLP
    code = main(
        [
            "export",
            "--model",
            "digits_mlp",
            "--out",
            str(tmp_path / "o"),
            "--input-dtype",
            "int64",
            "--no-progress",
        ]  # fmt: skip
    )

    # Assert: a usage error naming the flags, one line, and no --out folder.
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "an input of shape 64 (int64) does not fit model digits_mlp" in err
    assert "check --input-shape and --input-dtype" in err
    assert not (tmp_path / "o").exists()


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fc(x)
        return out, out


def test_a_model_the_device_cannot_train_is_refused_with_its_reason(tmp_path: Path) -> None:
    # float64 weights: not the input's fault, so not an ExampleInputError.
    with pytest.raises(ExportError, match=r"parameter '0.weight' is float64.*model.float\(\)"):
        export_training_artifacts(
            nn.Sequential(nn.Linear(3, 2).double()), torch.randn(4, 3), tmp_path / "a"
        )
    # Several outputs: the step takes one output tensor into the loss.
    with pytest.raises(ExportError, match="must return one tensor"):
        export_training_artifacts(_TwoOutputs(), torch.randn(4, 3), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_progress_line_does_not_call_a_failed_export_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: progress on (stderr is not a terminal here: one line at the start, one at the end)
    code = main(
        ["export", "--model", "digits_mlp", "--out", str(tmp_path / "o"), "--input-shape", "3"]
    )

    # Assert
    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("plume export: tracing digits_mlp (2,410 parameters) into ")
    assert " stopped in " in lines[1] and "done" not in lines[1]
    assert lines[2].startswith("plume export: error: an input of shape 3 (float32)")


def test_an_interrupted_write_leaves_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: Ctrl-C arrives at the first rename, into a folder that already exists.
    def interrupted(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)

    # Execute
    with pytest.raises(KeyboardInterrupt):
        export_training_artifacts(nn.Linear(2, 2), torch.randn(3, 2), tmp_path)

    # Assert: the folder is as it was (empty), and kept since it was not the export's.
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []


def test_a_token_id_past_the_vocabulary_is_an_example_input_error(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Embedding(5, 2), nn.Flatten(), nn.Linear(6, 3))
    ids = torch.tensor([[0, 1, 2], [3, 4, 7]])
    with pytest.raises(ExampleInputError, match=r"\[2, 3\] \(int64\) does not fit.*index out of"):
        export_training_artifacts(model, ids, tmp_path / "o")
    assert not (tmp_path / "o").exists()
