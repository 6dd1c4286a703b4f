"""`sdk.ort` load-time checks (helper-194's findings): a graph name that is not UTF-8 is an
`ArtifactError`, and `threads` is checked and spent with care."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from sdk.ort import ArtifactError, OrtTrainer, session_options
from tests._export_cache import ExportCache, example


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("h201_checks") / "art"
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    export_cache.export(model, example(2, 5), out)
    return out


def _rewrite(src: Path, dst: Path, what: str, old: bytes, new: bytes) -> Path:
    shutil.copytree(src, dst)
    data = (dst / f"{what}.onnx").read_bytes()
    assert old in data
    data = data.replace(old, new)
    (dst / f"{what}.onnx").write_bytes(data)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"][what].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize("what", ["train_step", "infer"])
def test_a_name_that_is_not_utf8_is_an_artifact_error(
    artifacts: Path, tmp_path: Path, what: str
) -> None:
    # The batch dimension's name, same length, two bytes that are no UTF-8.
    bad = _rewrite(artifacts, tmp_path / "bad", what, b"batch", b"\xca\xfetch")
    with pytest.raises(ArtifactError, match="cannot be read"):
        OrtTrainer.from_dir(bad)


@pytest.mark.parametrize("threads", [True, False, 2.5, 2.0, "2", None, -1, 257, 2**31, 2**40])
def test_bad_thread_counts_are_value_errors(artifacts: Path, threads: object) -> None:
    with pytest.raises(ValueError, match="threads must be an integer from 0"):
        OrtTrainer.from_dir(artifacts, threads=threads)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads must be an integer from 0"):
        session_options(threads)  # type: ignore[arg-type]


def test_spinning_is_off_with_more_than_one_thread() -> None:
    def spinning(threads: int) -> str:
        return session_options(threads).get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(2) == "0"
    assert spinning(0) == "0"
    with pytest.raises(Exception):  # noqa: B017  (onnxruntime's untyped "not found")
        spinning(1)  # one thread: no pool that could spin; onnxruntime's default stays


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts Linux's threads")
def test_the_infer_session_has_one_thread(artifacts: Path) -> None:
    before = _os_threads()
    trainer = OrtTrainer.from_dir(artifacts, threads=8)
    added = _os_threads() - before
    assert trainer._infer.get_session_options().intra_op_num_threads == 1
    assert trainer._train.get_session_options().intra_op_num_threads == 8
    # 7 pool threads for training (the caller's thread is the eighth); before, as many again
    # for inference (14).
    assert added <= 10
    x = torch.rand(3, 5).numpy()
    params = torch.zeros(trainer.spec.size).numpy()
    assert trainer.predict(params, x).shape == (3, 3)
