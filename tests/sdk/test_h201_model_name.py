"""`sdk.Client` refuses artifacts exported under another model's name than the task's
(helper-194's finding: only the shapes were compared, so artifacts of a model with the same
layout and other layers trained a silently wrong update)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from protocol.messages import TensorShape
from sdk import client
from sdk.ort import ArtifactError, OrtTrainer, load_manifest
from tests._export_cache import ExportCache, example


def _model(act: type[torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), act(), torch.nn.Linear(4, 3))


def _task(trainer: OrtTrainer, model_name: str) -> SimpleNamespace:
    spec = [TensorShape(e.name, list(e.shape)) for e in trainer.spec.entries]
    return SimpleNamespace(task_id=7, model_name=model_name, spec=spec)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("h201_names")
    export_cache.export(_model(torch.nn.Tanh), example(2, 5), root / "named",
                        model_name="tanh_mlp")  # fmt: skip
    export_cache.export(_model(torch.nn.ReLU), example(2, 5), root / "unnamed")
    return {"named": root / "named", "unnamed": root / "unnamed"}


def test_the_manifest_says_whether_the_name_was_given(exports: dict[str, Path]) -> None:
    named, unnamed = load_manifest(exports["named"]), load_manifest(exports["unnamed"])
    assert (named.model, named.model_named) == ("tanh_mlp", True)
    assert (unnamed.model, unnamed.model_named) == ("Sequential", False)


def test_a_named_export_of_another_model_is_refused(exports: dict[str, Path]) -> None:
    trainer = OrtTrainer.from_dir(exports["named"])
    with pytest.raises(ValueError, match="exported from model 'tanh_mlp', task 7 trains"):
        client._check_layout(_task(trainer, "relu_mlp"), trainer)  # type: ignore[arg-type]
    client._check_layout(_task(trainer, "tanh_mlp"), trainer)  # type: ignore[arg-type]
    client._check_layout(_task(trainer, ""), trainer)  # type: ignore[arg-type]


def test_an_export_without_a_name_is_not_compared(exports: dict[str, Path]) -> None:
    # Its manifest's model is the class name, which no task is expected to use.
    trainer = OrtTrainer.from_dir(exports["unnamed"])
    client._check_layout(_task(trainer, "relu_mlp"), trainer)  # type: ignore[arg-type]


def test_model_named_must_be_a_bool(exports: dict[str, Path], tmp_path: Path) -> None:
    d = tmp_path / "bad"
    shutil.copytree(exports["named"], d)
    data = json.loads((d / "manifest.json").read_text())
    data["model_named"] = "yes"
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="'model_named' has the wrong type"):
        load_manifest(d)
