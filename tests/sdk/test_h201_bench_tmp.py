"""bench/onnx_train.py removes its temporary folder (exported artifacts, a data file) when it
returns or fails (helper-194's finding: the mkdtemp folder was never removed)."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("h201_onnx_train", ROOT / "bench/onnx_train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_temporary_folder_is_removed_when_the_run_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bench = _load()
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        path = real_mkdtemp(*args, **{**kwargs, "dir": str(tmp_path)})
        made.append(Path(path))
        return path

    def export(*args: Any, **kwargs: Any) -> None:
        out = Path(args[2])
        out.mkdir(parents=True)
        (out / "train_step.onnx").write_bytes(b"x")  # something of the run in the folder
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(bench, "load_mnist", lambda: None)
    monkeypatch.setattr(bench, "export_training_artifacts", export)
    monkeypatch.setattr(bench.torch, "set_num_threads", lambda n: None)
    with pytest.raises(RuntimeError, match="stop here"):
        bench.main(["--quick", "--models", "mlp", "--out", str(tmp_path / "r.json")])
    assert len(made) == 1
    assert not made[0].exists()
