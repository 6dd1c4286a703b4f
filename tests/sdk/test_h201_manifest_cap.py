"""`load_manifest` / `OrtTrainer.from_dir` cap each graph at `max_file_bytes`, 16 MiB by
default (helper-194's finding: the cap was a fixed 256 MiB, 690 times the largest zoo graph)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sdk.ort import ArtifactError, OrtTrainer, load_manifest
from tests._export_cache import ExportCache, example

MIB = 1 << 20


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("h201_cap") / "art"
    export_cache.export(torch.nn.Sequential(torch.nn.Linear(4, 3)), example(2, 4), out)
    return out


def _big_graph(src: Path, dst: Path, size: int) -> Path:
    """A copy whose infer.onnx is `size` bytes (a sparse file) and declared so."""
    dst.mkdir()
    for name in ("train_step.onnx", "manifest.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    with (dst / "infer.onnx").open("wb") as f:
        f.truncate(size)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["infer"]["bytes"] = size
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_the_default_cap_is_16_mib(artifacts: Path, tmp_path: Path) -> None:
    big = _big_graph(artifacts, tmp_path / "big", 16 * MIB + 1)
    with pytest.raises(ArtifactError, match=f"more than the {16 * MIB} allowed"):
        load_manifest(big)
    with pytest.raises(ArtifactError, match=f"more than the {16 * MIB} allowed"):
        OrtTrainer.from_dir(big)


def test_a_caller_sets_the_cap(artifacts: Path, tmp_path: Path) -> None:
    size = os.path.getsize(artifacts / "train_step.onnx")
    with pytest.raises(ArtifactError, match=f"more than the {size - 1} allowed"):
        OrtTrainer.from_dir(artifacts, max_file_bytes=size - 1)
    OrtTrainer.from_dir(artifacts, max_file_bytes=size)  # both graphs fit exactly
    # A larger cap lets a larger file through to the digest check.
    big = _big_graph(artifacts, tmp_path / "big", 16 * MIB + 1)
    with pytest.raises(ArtifactError, match="SHA-256 does not match"):
        load_manifest(big, max_file_bytes=32 * MIB)


@pytest.mark.parametrize("cap", [0, -1, True, 2.5, "1000"])
def test_a_cap_that_is_no_byte_count_is_a_value_error(artifacts: Path, cap: object) -> None:
    with pytest.raises(ValueError, match="max_file_bytes must be a positive integer"):
        load_manifest(artifacts, max_file_bytes=cap)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_file_bytes must be a positive integer"):
        OrtTrainer.from_dir(artifacts, max_file_bytes=cap)  # type: ignore[arg-type]
