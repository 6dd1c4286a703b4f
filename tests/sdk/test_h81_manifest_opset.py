"""The manifest's `opset` is checked against the graphs when `OrtTrainer` loads them: a
manifest naming another opset than the one its graphs import (edited, or another exporter's)
is an `ArtifactError` naming both; it loaded before, the field informational only (the first
test failed). The opset is read from the graphs' own bytes (`opset_import` of the ModelProto)
by a small protobuf walk that refuses malformed bytes with `ValueError` only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from torch import nn

from sdk.onnx_export import OPSET
from sdk.ort import ArtifactError, OrtTrainer
from sdk.ort._runtime import _default_opset
from tests._export_cache import ExportCache, example


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("h81") / "mlp"
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    export_cache.export(model, example(4, 6, seed=1), out)
    return out


def _with_opset(src: Path, dst: Path, opset: int) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["opset"] = opset
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize("opset", [OPSET - 1, OPSET + 1])
def test_a_manifest_naming_another_opset_is_refused(
    exported: Path, tmp_path: Path, opset: int
) -> None:
    # Prepare: the graphs as exported (opset 18), the manifest edited
    d = _with_opset(exported, tmp_path / "edited", opset)
    # Execute / Assert
    with pytest.raises(ArtifactError, match=f"imports opset {OPSET}.*manifest says {opset}"):
        OrtTrainer.from_dir(d)


def test_the_exported_opset_loads(exported: Path) -> None:
    trainer = OrtTrainer.from_dir(exported)
    assert trainer.manifest.opset == OPSET
    for name in ("train_step.onnx", "infer.onnx"):
        assert _default_opset((exported / name).read_bytes()) == OPSET


def _model_bytes(*imports: tuple[str, int]) -> bytes:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in imports])
    model.doc_string = "after the opset imports: the walk must step over every field"
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("imports", "want"),
    [
        ([("", 18)], 18),
        ([("ai.onnx", 17)], 17),
        ([("local", 1), ("", 16)], 16),
        ([("com.microsoft", 1)], None),
        ([], None),
    ],
)
def test_the_default_domain_opset_is_read_from_the_bytes(
    imports: list[tuple[str, int]], want: int | None
) -> None:
    data = _model_bytes(*imports)
    assert onnx.load_from_string(data).opset_import is not None  # a real ModelProto
    assert _default_opset(data) == want


def test_two_default_domain_imports_that_differ_are_refused() -> None:
    with pytest.raises(ValueError, match="opset"):
        _default_opset(_model_bytes(("", 17), ("ai.onnx", 18)))


@pytest.mark.parametrize(
    "data",
    [b"\x42", b"\x0a\x05ab", b"\xff" * 11, b"\x0b", b"\x42\x80"],
    ids=["no-length", "short-field", "long-varint", "wire-3", "cut-varint"],
)
def test_malformed_bytes_are_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        _default_opset(data)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_give_an_opset_none_or_a_value_error(data: bytes) -> None:
    try:
        got = _default_opset(data)
    except ValueError:
        return
    assert got is None or isinstance(got, int)
