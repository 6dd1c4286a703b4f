"""Exported ONNX artifacts: byte-reproducible, free of build paths, and train as before stripping."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import TensorProto, helper

import sdk.onnx_export
from mobile_sim.models import build_model
from sdk.onnx_export import export_training_artifacts
from sdk.ort import OrtTrainer, load_manifest

REPO = Path(__file__).resolve().parents[2]
FILES = ("train_step.onnx", "infer.onnx", "manifest.json")
# The packages an export imports (sdk.onnx_export, mobile_sim.models and what they pull in).
PACKAGES = ("compression", "coordinator", "mobile_sim", "protocol", "sdk")
LR = 0.05


def _example_x() -> torch.Tensor:
    return torch.randn(4, 64, generator=torch.Generator().manual_seed(0))


def _export(out: Path) -> None:
    # Momentum, so that the state inputs and outputs are covered too.
    export_training_artifacts(
        build_model("digits_mlp", seed=0),
        _example_x(),
        out,
        optimizer="momentum",
        momentum=0.9,
        model_name="digits_mlp",
    )


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """digits_mlp exported twice in this process, and once with the metadata left in."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("onnx_reproducible")
    out = {"first": root / "first", "second": root / "second", "unstripped": root / "unstripped"}
    _export(out["first"])
    _export(out["second"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sdk.onnx_export, "_strip_metadata", lambda model: None)
        _export(out["unstripped"])
    return out


def _annotations(message: Message, where: str = "model") -> list[str]:
    """Where a doc string or metadata property is set, at any depth of an ONNX proto."""
    found = []
    for field, value in message.ListFields():
        if field.name in ("doc_string", "metadata_props"):
            found.append(f"{where}.{field.name}")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = [value] if isinstance(value, Message) else list(value)
            for i, item in enumerate(items):
                found += _annotations(item, f"{where}.{field.name}[{i}]")
    return found


def _note(proto: Any, text: str) -> None:
    proto.doc_string = text
    entry = proto.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.stack_trace", f'File "/home/build/{text}.py"'


def _annotated_model() -> onnx.ModelProto:
    """A model with annotations in every place ONNX allows them, nested ones included."""
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y_branch"], name="branch_id")],
        "branch",
        [],
        [helper.make_tensor_value_info("y_branch", TensorProto.FLOAT, [2])],
    )
    _note(branch, "branch_graph")
    _note(branch.node[0], "branch_node")
    _note(branch.output[0], "branch_output")
    constant = helper.make_tensor("c", TensorProto.FLOAT, [2], [1.0, 2.0])
    _note(constant, "attribute_tensor")
    square = helper.make_function(
        "local",
        "Square",
        ["a"],
        ["b"],
        [helper.make_node("Mul", ["a", "a"], ["b"], name="mul")],
        [helper.make_opsetid("", 18)],
    )
    _note(square, "function")
    _note(square.node[0], "function_node")
    nodes = [
        helper.make_node("Constant", [], ["c"], name="const", value=constant),
        helper.make_node("Add", ["x", "c"], ["s"], name="add"),
        helper.make_node("Square", ["s"], ["q"], name="square", domain="local"),
        helper.make_node("ReduceSum", ["q"], ["total"], name="sum", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=branch),
    ]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    _note(zero, "initializer")
    graph = helper.make_graph(
        nodes,
        "annotated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[zero],
        value_info=[helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])],
    )
    _note(graph, "graph")
    for part in (*graph.node, graph.input[0], graph.output[0], graph.value_info[0]):
        _note(part, part.name)
    graph.node[0].attribute[0].doc_string = "attribute"
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
        functions=[square],
    )
    _note(model, "model")
    return model


def test_strip_clears_annotations_at_every_depth() -> None:
    # Prepare: a model annotated everywhere, nested places included.
    model = _annotated_model()
    before = _annotations(model)

    # Execute
    sdk.onnx_export._strip_metadata(model)

    # Assert: every annotation went (subgraphs, functions, attribute tensors included), and
    # what remains is still a valid model computing the same thing.
    nested = (".g[0].node[0].metadata_props", "functions[0].node[0].doc_string", ".t[0].doc_string")
    assert [place for place in nested if not any(place in w for w in before)] == []
    assert _annotations(model) == []
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.array([1.0, -5.0], np.float32)})
    np.testing.assert_array_equal(y, [1.0, -5.0])


def test_two_exports_are_byte_identical(exports: dict[str, Path]) -> None:
    # Execute
    first = {name: (exports["first"] / name).read_bytes() for name in FILES}
    second = {name: (exports["second"] / name).read_bytes() for name in FILES}

    # Assert: the same bytes, and manifests whose digests verify against them.
    assert first == second
    manifest = json.loads(first["manifest.json"])
    assert manifest["files"]["train_step"]["bytes"] == len(first["train_step.onnx"])
    load_manifest(exports["first"], verify=True)


def test_unstripped_exports_differ_within_one_process(exports: dict[str, Path]) -> None:
    # The byte-identity above means something only if the exporter's own output varies: its
    # stack traces name fx code keys that count up with every trace in the process.
    unstripped = (exports["unstripped"] / "train_step.onnx").read_bytes()
    assert unstripped != (exports["first"] / "train_step.onnx").read_bytes()
    assert b"<eval_with_key>." in unstripped


def test_no_build_paths_or_annotations_are_shipped(exports: dict[str, Path]) -> None:
    # Prepare: the strings a leak would contain (the unstripped export shows they would).
    leaks = [str(REPO).encode(), b"site-packages", str(exports["first"]).encode()]
    unstripped = (exports["unstripped"] / "train_step.onnx").read_bytes()
    assert str(REPO).encode() in unstripped and b"site-packages" in unstripped

    for name in FILES:
        # Execute
        data = (exports["first"] / name).read_bytes()

        # Assert
        assert [leak for leak in leaks if leak in data] == [], name
        if name.endswith(".onnx"):
            assert _annotations(onnx.load_from_string(data)) == [], name
            assert len(data) < len((exports["unstripped"] / name).read_bytes()) / 4, name


def test_stripping_removes_only_annotations(exports: dict[str, Path]) -> None:
    for name in ("train_step.onnx", "infer.onnx"):
        # Prepare
        stripped = onnx.load(exports["first"] / name)
        unstripped = onnx.load(exports["unstripped"] / name)

        # Execute: clear by hand the annotations the exporter writes (nodes and graph I/O).
        assert stripped != unstripped
        for items in (
            unstripped.graph.input,
            unstripped.graph.output,
            unstripped.graph.value_info,
            unstripped.graph.node,
        ):
            for item in items:
                item.ClearField("metadata_props")

        # Assert: the whole models are then equal: names, types, shapes, constants, ops,
        # opsets and producer fields all as exported.
        assert stripped == unstripped, name


def _batches(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = [7, 1, 5, 8, 3][:n]
    return [
        (
            rng.standard_normal((b, 64)).astype(np.float32),
            rng.integers(0, 10, b).astype(np.int64),
        )
        for b in sizes
    ]


@pytest.mark.parametrize("optimization", ["all", "disable"])
def test_stripped_graphs_train_bit_identically(exports: dict[str, Path], optimization: str) -> None:
    # Prepare
    stripped = OrtTrainer.from_dir(exports["first"], optimization=optimization)
    unstripped = OrtTrainer.from_dir(exports["unstripped"], optimization=optimization)
    flat = np.random.default_rng(1).normal(0, 0.1, stripped.spec.size).astype(np.float32)
    start = stripped.split(flat)
    state = [np.zeros_like(p) for p in start]

    # Execute: five steps of varying batch size through both graphs, then inference.
    runs = []
    for trainer in (stripped, unstripped):
        params, buffers, losses = start, state, []
        for x, y in _batches(5, seed=2):
            loss, params, buffers = trainer.step(params, buffers, x, y, LR)
            losses.append(loss)
        flat = np.concatenate([p.reshape(-1) for p in params])
        runs.append((losses, params, buffers, trainer.predict(flat, _batches(1, seed=3)[0][0])))

    # Assert: bit for bit, since only annotations differ.
    (loss_a, params_a, bufs_a, logits_a), (loss_b, params_b, bufs_b, logits_b) = runs
    assert loss_a == loss_b
    for a, b in zip([*params_a, *bufs_a, logits_a], [*params_b, *bufs_b, logits_b], strict=True):
        np.testing.assert_array_equal(a, b)


_EXPORT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import compression, mobile_sim, sdk
    from mobile_sim.models import build_model
    from sdk.onnx_export import export_training_artifacts

    torch.set_num_threads(1)
    export_training_artifacts(
        build_model("digits_mlp", seed=0),
        torch.randn(4, 64, generator=torch.Generator().manual_seed(0)),
        sys.argv[1],
        optimizer="momentum",
        momentum=0.9,
        model_name="digits_mlp",
    )
    print(json.dumps([m.__file__ for m in (compression, mobile_sim, sdk)]))
    """
)


@pytest.fixture
def relocated_repo(tmp_path: Path) -> Iterator[Path]:
    """A copy of the packages at another path, where nothing names the original checkout."""
    root = tmp_path / "elsewhere" / "plume-copy"
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    yield root


def test_artifacts_do_not_depend_on_the_install_path(
    exports: dict[str, Path], relocated_repo: Path, tmp_path: Path
) -> None:
    # Prepare: the copy comes first on the path, and is the working directory.
    out = tmp_path / "out"
    env = {"PYTHONPATH": str(relocated_repo), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    # Execute
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_SCRIPT, str(out)],
        cwd=relocated_repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    # Assert: the copy's code ran, and wrote the same bytes as this checkout's.
    assert proc.returncode == 0, proc.stderr
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(Path(f).is_relative_to(relocated_repo) for f in imported), imported
    for name in FILES:
        assert (out / name).read_bytes() == (exports["first"] / name).read_bytes(), name


def test_train_leaves_the_callers_params_alone(exports: dict[str, Path]) -> None:
    # Prepare
    trainer = OrtTrainer.from_dir(exports["first"])
    params = np.random.default_rng(4).normal(0, 0.1, trainer.spec.size).astype(np.float32)
    before = params.copy()
    x = np.concatenate([x for x, _ in _batches(5, seed=5)])
    y = np.concatenate([y for _, y in _batches(5, seed=5)])

    # Execute: train, and step by hand through the same shuffle from copies of the tensors.
    got = trainer.train(params, x, y, epochs=2, batch_size=6, lr=LR, rng=np.random.default_rng(6))
    rng = np.random.default_rng(6)
    tensors = [t.copy() for t in trainer.split(before)]
    state = [np.zeros_like(t) for t in tensors]
    for _ in range(2):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 6):
            idx = order[start : start + 6]
            _, tensors, state = trainer.step(tensors, state, x[idx], y[idx], LR)
    untrained = trainer.train(params, x, y, epochs=0, batch_size=6, lr=LR, rng=rng)

    # Assert: the caller's array is untouched and never handed back; the result is unchanged.
    np.testing.assert_array_equal(params, before)
    np.testing.assert_array_equal(got.params, np.concatenate([t.reshape(-1) for t in tensors]))
    assert not np.shares_memory(got.params, params)
    np.testing.assert_array_equal(untrained.params, params)
    assert not np.shares_memory(untrained.params, params)
