"""`sdk.ort` refuses graphs naming external data, wherever the tensor sits (helper-194's
finding: only recent onnxruntime releases keep an external-data path inside the artifact
folder; older ones would read any file the app can read into a tensor)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sdk.ort import ArtifactError, OrtTrainer, _runtime
from tests._export_cache import ExportCache, example


def _external(name: str, location: str = "inside.bin", flag: bool = True) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend([4])
    if flag:
        t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _model(graph: onnx.GraphProto, **kw: object) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], **kw)
    return model.SerializeToString()


def _plain_graph(
    initializers: list[TensorProto] | None = None, nodes: list[onnx.NodeProto] | None = None
) -> onnx.GraphProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    return helper.make_graph(
        nodes or [helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y], initializers or []
    )


def _if_node(
    branch_init: list[TensorProto], attr_tensor: TensorProto | None = None
) -> onnx.NodeProto:
    out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])
    inner_nodes = (
        [helper.make_node("Constant", [], ["b"], value=attr_tensor)]
        if attr_tensor is not None
        else [helper.make_node("Identity", ["x"], ["b"])]
    )
    branch = helper.make_graph(inner_nodes, "branch", [], [out], branch_init)
    return helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)


def _cases() -> dict[str, bytes]:
    ext = _external("W")
    sparse = helper.make_sparse_tensor(
        _external("v"), numpy_helper.from_array(np.array([0], np.int64), "i"), [4]
    )
    const = helper.make_node("Constant", [], ["y"], value=ext)
    tensors_attr = helper.make_node("Custom", ["x"], ["y"], domain="my", ts=[ext, ext])
    func = helper.make_function(
        "my",
        "F",
        ["a"],
        ["b"],
        [helper.make_node("Constant", [], ["b"], value=ext)],
        [helper.make_opsetid("", 18)],
    )
    sparse_graph = _plain_graph()
    sparse_graph.sparse_initializer.append(sparse)
    training = onnx.TrainingInfoProto()
    training.initialization.CopyFrom(_plain_graph([ext]))
    trained = onnx.ModelProto()
    trained.ParseFromString(_model(_plain_graph()))
    trained.training_info.append(training)
    return {
        "initializer": _model(_plain_graph([ext])),
        "external_data without the flag": _model(_plain_graph([_external("W", flag=False)])),
        "sparse initializer": _model(sparse_graph),
        "Constant attribute": _model(_plain_graph(nodes=[const])),
        "tensors attribute": _model(_plain_graph(nodes=[tensors_attr])),
        "subgraph initializer": _model(_plain_graph(nodes=[_if_node([ext])])),
        "subgraph attribute": _model(_plain_graph(nodes=[_if_node([], ext)])),
        "function": _model(_plain_graph(), functions=[func]),
        "training info": trained.SerializeToString(),
    }


@pytest.mark.parametrize("where", list(_cases()))
def test_external_tensor_is_found_anywhere(where: str) -> None:
    data = _cases()[where]
    with pytest.raises(ArtifactError, match="external data file"):
        _runtime._check_no_external_data(data, "infer")


def test_graphs_without_external_data_pass() -> None:
    inline = numpy_helper.from_array(np.zeros(4, np.float32), "W")
    for data in (
        _model(_plain_graph([inline])),
        _model(_plain_graph(nodes=[_if_node([inline], inline)])),
    ):
        _runtime._check_no_external_data(data, "infer")


def test_unreadable_bytes_are_an_artifact_error() -> None:
    with pytest.raises(ArtifactError, match="cannot be read"):
        _runtime._check_no_external_data(b"\x0f\xff", "infer")


def test_field_numbers_are_onnx_s() -> None:
    """The walker's table, against onnx's own descriptors: for every message type it has, the
    fields it descends into are exactly that type's fields holding a walked message type."""
    # Prepare: which onnx message each of the walker's kinds stands for
    protos = {
        _runtime._MODEL: onnx.ModelProto,
        _runtime._TRAINING: onnx.TrainingInfoProto,
        _runtime._GRAPH: onnx.GraphProto,
        _runtime._NODE: onnx.NodeProto,
        _runtime._ATTRIBUTE: onnx.AttributeProto,
        _runtime._FUNCTION: onnx.FunctionProto,
        _runtime._SPARSE: onnx.SparseTensorProto,
        _runtime._TENSOR: onnx.TensorProto,
    }
    kind_of = {proto.DESCRIPTOR.full_name: kind for kind, proto in protos.items()}

    # Execute: the table onnx's descriptors give
    expected = {
        kind: {
            field.number: kind_of[field.message_type.full_name]
            for field in proto.DESCRIPTOR.fields
            if field.message_type is not None and field.message_type.full_name in kind_of
        }
        for kind, proto in protos.items()
    }

    # Assert
    assert set(_runtime._MESSAGE_FIELDS) == set(protos)
    assert _runtime._MESSAGE_FIELDS == expected
    t = onnx.TensorProto.DESCRIPTOR.fields_by_name
    assert _runtime._TENSOR_EXTERNAL_DATA == t["external_data"].number
    assert _runtime._TENSOR_DATA_LOCATION == t["data_location"].number
    model = onnx.ModelProto.DESCRIPTOR.fields_by_name
    assert _runtime._OPSET_IMPORT == model["opset_import"].number


def test_trainer_refuses_an_artifact_with_external_data(
    tmp_path: Path, export_cache: ExportCache
) -> None:
    """End to end: an export whose infer graph gained an initializer kept in a file inside the
    artifact folder (which onnxruntime 1.32 reads) is refused at load."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    out = tmp_path / "art"
    export_cache.export(model, example(2, 4), out)
    np.arange(4, dtype=np.float32).tofile(out / "inside.bin")
    graph = onnx.load_model_from_string((out / "infer.onnx").read_bytes())
    graph.graph.initializer.append(_external("W"))
    data = graph.SerializeToString()
    (out / "infer.onnx").write_bytes(data)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["infer"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="infer: the graph keeps a tensor in an external"):
        OrtTrainer.from_dir(out)
    # The untouched export loads.
    clean = tmp_path / "clean"
    shutil.rmtree(out)
    export_cache.export(model, example(2, 4), clean)
    OrtTrainer.from_dir(clean)
