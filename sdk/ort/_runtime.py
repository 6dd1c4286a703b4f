"""Local training on plain onnxruntime from exported artifacts (numpy in, numpy out; no torch)."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from compression import ModelSpec

from .._data import (
    IGNORE_INDEX,
    TrainingDataError,
    check_finite_inputs,
    check_labels,
    check_rng,
    check_settings,
    check_start_params,
    check_trained_params,
    diverged,
)
from .._types import CancelFlag, TrainingCancelled, TrainResult
from ._manifest import ArtifactError, Manifest, load_manifest

__all__ = ["OrtTrainer", "session_options"]

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# The most intra-op threads a session may be given: more than a phone (or most servers) has
# cores. onnxruntime starts every one of them as an OS thread per session, whatever the cores,
# and a count past a C int was a raw pybind TypeError.
_MAX_THREADS = 256


def _check_threads(threads: object) -> int:
    """`threads` as an int; `ValueError` unless an integer from 0 to `_MAX_THREADS` (a bool is
    no thread count, nor a float such as 2.0 or a string), as `sdk.trainer.TorchTrainer`
    checks its own (which has no 0: torch's default there is None)."""
    if isinstance(threads, numbers.Integral) and not isinstance(threads, bool):
        n = int(threads)
        if 0 <= n <= _MAX_THREADS:
            return n
    raise ValueError(
        f"threads must be an integer from 0 (onnxruntime's default) to {_MAX_THREADS}, "
        f"got {threads!r}"
    )


def session_options(threads: int = 1, optimization: str = "all") -> ort.SessionOptions:
    """Session options for a device: `threads` intra-op threads (0 = onnxruntime's default,
    one per physical core; `ValueError` for anything but an integer from 0 to `_MAX_THREADS`).

    With more than one thread, the pool's threads do not spin while waiting for work
    (``session.intra_op.allow_spinning`` "0"): spinning keeps the waiting threads busy between
    the small kernels of a training step, CPU time (a phone's battery) spent for no work.
    """
    n = _check_threads(threads)
    if optimization not in _OPT_LEVELS:
        raise ValueError(f"optimization must be one of {sorted(_OPT_LEVELS)}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = n
    if n != 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _OPT_LEVELS[optimization]
    so.log_severity_level = 3  # errors only: a device app owns its own logging
    return so


def _check_names(
    session: ort.InferenceSession, inputs: Sequence[str], outputs: Sequence[str], what: str
) -> None:
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != list(inputs) or got_out != list(outputs):
        raise ArtifactError(
            f"{what}: graph inputs/outputs {got_in} -> {got_out} do not match the manifest"
        )


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    """The protobuf varint at `at` and the offset past it; `ValueError` if cut or too long."""
    value = 0
    for shift in range(0, 70, 7):
        if at >= len(data):
            raise ValueError("a varint runs past the end")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
    raise ValueError("a varint longer than 10 bytes")


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of each top-level field of the protobuf message `data`: an int
    for a varint, a view of the bytes otherwise (no copy: a graph field is up to `max_file_bytes`).
    `ValueError` for bytes that are not a message."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        wire = key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield key >> 3, value
            continue
        if wire == 2:
            size, at = _varint(data, at)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
        else:  # groups (3, 4) are not in ONNX; 6 and 7 are not wire types
            raise ValueError(f"wire type {wire}")
        if at + size > len(data):
            raise ValueError("a field runs past the end")
        yield key >> 3, data[at : at + size]
        at += size


_OPSET_IMPORT = 8  # ModelProto.opset_import: OperatorSetIdProto (1: domain, 2: version)


def _default_opset(model: bytes) -> int | None:
    """The opset of the default ONNX domain ("" or "ai.onnx") the serialized ModelProto
    `model` imports, or None if it imports none. `ValueError` for bytes that are not a
    ModelProto, or two default-domain imports that differ. Read by hand: sdk.ort needs only
    onnxruntime, whose sessions do not report the opset."""
    found: set[int] = set()
    for number, value in _fields(memoryview(model)):
        if number != _OPSET_IMPORT or isinstance(value, int):
            continue
        domain, version = b"", 1  # proto3 defaults of absent fields
        for inner, item in _fields(value):
            if inner == 1 and not isinstance(item, int):
                domain = bytes(item)
            elif inner == 2 and isinstance(item, int):
                version = item
        if domain in (b"", b"ai.onnx"):
            found.add(version)
    if len(found) > 1:
        raise ValueError(f"the default domain is imported at opsets {sorted(found)}")
    return found.pop() if found else None


def _check_opset(model: bytes, opset: int, what: str) -> None:
    """Raise `ArtifactError` unless graph `what` (serialized, `model`) imports the default ONNX
    domain at the manifest's `opset`: onnxruntime runs a graph by its own imports, so a manifest
    naming another (edited, or another exporter's) misdescribes what runs."""
    try:
        got = _default_opset(model)
    except ValueError as exc:
        raise ArtifactError(f"{what}: the graph's opset imports cannot be read ({exc})") from exc
    if got != opset:
        imports = "no opset" if got is None else f"opset {got}"
        raise ArtifactError(
            f"{what}: the graph imports {imports} of the default ONNX domain, the manifest says "
            f"{opset}: the manifest was edited, or belongs to another export"
        )


# Where a serialized ModelProto holds TensorProtos, by field number (onnx.proto3). Each key is
# a message type, each value its fields that are messages to descend into, by their type.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _TRAINING, _TENSOR, _SPARSE = range(8)
_MESSAGE_FIELDS: dict[int, dict[int, int]] = {
    # ModelProto: graph, training_info, functions
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    # TrainingInfoProto: initialization, algorithm
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    # GraphProto: node, initializer, sparse_initializer
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    # NodeProto: attribute
    _NODE: {5: _ATTRIBUTE},
    # AttributeProto: t, g, tensors, graphs, sparse_tensor, sparse_tensors
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    # FunctionProto: node, attribute_proto (attribute defaults)
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    # SparseTensorProto: values, indices
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {},
}
_TENSOR_EXTERNAL_DATA = 13  # TensorProto.external_data: where the bytes are (location, offset)
_TENSOR_DATA_LOCATION = 14  # TensorProto.data_location: DEFAULT 0, EXTERNAL 1


def _external_tensor(model: bytes) -> bool:
    """Whether the serialized ModelProto `model` holds a TensorProto whose data lives outside
    the file (data_location EXTERNAL, or any external_data entry): in an initializer, a sparse
    initializer, a node attribute (subgraphs included, at any depth), a function or a training
    graph. `ValueError` for bytes that are not a message. Walked by hand (sdk.ort needs only
    onnxruntime) with a stack, not recursion, so nesting cannot exhaust Python's stack."""
    stack: list[tuple[int, memoryview]] = [(_MODEL, memoryview(model))]
    while stack:
        kind, data = stack.pop()
        inner = _MESSAGE_FIELDS[kind]
        for number, value in _fields(data):
            if kind == _TENSOR:
                if number == _TENSOR_EXTERNAL_DATA:
                    return True
                if number == _TENSOR_DATA_LOCATION and value != 0:
                    return True
            elif number in inner and not isinstance(value, int):
                stack.append((inner[number], value))
    return False


# The flatbuffer file identifier of an ORT-format model, at bytes 4..8 of the file.
_ORT_FORMAT_ID = b"ORTM"


def _check_no_external_data(model: bytes, what: str) -> None:
    """Raise `ArtifactError` if graph `what` (serialized, `model`) names external data.

    Plume's exports never write any, and onnxruntime reads such a tensor's bytes from a path
    the file gives, at session creation: older onnxruntime releases followed a path out of the
    artifact directory (``../``, an absolute path, a symlink), so a hostile graph could load
    any file the app can read into a tensor that may reach the uploaded update. Refusing them
    here makes that independent of the onnxruntime version. Called before any session exists.
    """
    if model[4:8] == _ORT_FORMAT_ID:
        # onnxruntime also loads its own flatbuffer format from bytes; the walker here reads
        # ONNX protobuf only, and refused such a file by accident (helper-338): say it outright.
        raise ArtifactError(
            f"{what}: the file is in ONNX Runtime's own format (.ort, a flatbuffer), not an "
            "ONNX protobuf model as `plume export` writes; export the model again"
        )
    try:
        found = _external_tensor(model)
    except ValueError as exc:
        raise ArtifactError(f"{what}: the graph cannot be read ({exc})") from exc
    if found:
        raise ArtifactError(
            f"{what}: the graph keeps a tensor in an external data file; Plume's exports hold "
            "every tensor in the graph, and a device loads no other file"
        )


def _first_line(exc: BaseException) -> str:
    """onnxruntime's error, first line only: its messages can carry a page of detail."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}
# How far the measured momentum may be from the manifest's: float32 rounding of `momentum *
# buf + g` is about 6e-8 relative, so this is loose for a correct graph and tight for any other
# coefficient an export could have used.
_MOMENTUM_TOL = 1e-6
# `check_matches` measures the momentum on one example of zeros of the graph's input shape; past
# this many values (64 MiB of float32) it leaves the measurement to `train`, on the caller's data.
_MAX_PROBE_VALUES = 1 << 24


def _check_arg(arg: ort.NodeArg, dtype: str, shape: Sequence[int], batch: bool, what: str) -> None:
    """Raise `ArtifactError` unless graph input/output `arg` has `dtype` and `shape`.

    With `batch`, `shape` follows a leading batch dimension that must be dynamic (a name, or
    None), since the runtime feeds batches of any size.
    """
    dims = list(arg.shape)
    if batch:
        if not dims or isinstance(dims[0], int):
            raise ArtifactError(f"{what}: {arg.name} needs a dynamic batch dimension, has {dims}")
        dims = dims[1:]
    if arg.type != _ORT_TYPES[dtype] or dims != list(shape):
        want = ["batch", *shape] if batch else list(shape)
        raise ArtifactError(
            f"{what}: {arg.name} is {arg.type}{list(arg.shape)}, the manifest says {dtype}{want}"
        )


def _check_signature(train: ort.InferenceSession, infer: ort.InferenceSession, m: Manifest) -> int:
    """Check every graph input and output against the manifest; return the logits' last dim.

    Called after the names matched, so the positions line up. A mismatch would otherwise only
    surface mid-training as an untyped onnxruntime error (or, for a dynamic shape, not at all).
    """
    shapes = [e.shape for e in m.spec.entries]
    n = len(shapes)
    tensors = shapes * (2 if m.state_inputs else 1)  # parameters, then momentum buffers
    t_in, t_out = train.get_inputs(), train.get_outputs()
    for arg, shape in zip(t_in[: len(tensors)], tensors, strict=True):
        _check_arg(arg, "float32", shape, False, "train_step")
    _check_arg(t_in[-3], m.x_dtype, m.x_shape, True, "train_step")
    _check_arg(t_in[-2], m.y_dtype, m.y_shape, True, "train_step")
    _check_arg(t_in[-1], "float32", (), False, "train_step")
    _check_arg(t_out[0], "float32", (), False, "train_step")
    for arg, shape in zip(t_out[1:], tensors, strict=True):
        _check_arg(arg, "float32", shape, False, "train_step")
    i_in, i_out = infer.get_inputs(), infer.get_outputs()
    for arg, shape in zip(i_in[:n], shapes, strict=True):
        _check_arg(arg, "float32", shape, False, "infer")
    _check_arg(i_in[-1], m.x_dtype, m.x_shape, True, "infer")
    if len(i_out) != 1:
        raise ArtifactError(f"infer: one output (the logits) expected, got {len(i_out)}")
    logits = list(i_out[0].shape)
    classes = logits[-1] if len(logits) >= 2 else None
    if not isinstance(classes, int) or classes < 1:
        raise ArtifactError(f"infer: logits {logits} need a batch and a static last dimension")
    _check_arg(i_out[0], "float32", logits[1:], True, "infer")
    if m.loss == "ce" and list(m.y_shape) != logits[1:-1]:
        raise ArtifactError(f"infer: logits {logits} do not fit class targets {list(m.y_shape)}")
    if m.loss == "mse" and list(m.y_shape) != logits[1:]:
        # MSE would broadcast them (targets [B, 1] against logits [B, 3]) and train silently.
        raise ArtifactError(f"infer: logits {logits} do not fit mse targets {list(m.y_shape)}")
    return classes


def _whole_numbers(values: npt.ArrayLike, what: str) -> npt.NDArray:
    """`values` as an array, after checking they are integers (or floats with whole values)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.floor(arr)).any():
            raise ValueError(f"{what} must be whole numbers")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    return arr


def _labels(
    y: npt.NDArray, classes: int, allow_ignore: bool, where: str = "training data"
) -> npt.NDArray[np.int64]:
    """Class targets as int64 after checking that each is a class in [0, classes).

    Onnxruntime's gather would wrap a negative label to a class from the end (a silently wrong
    update) and fail with an untyped error past the end; torch raises for both. With
    `allow_ignore`, -100 is let through: torch's cross_entropy and the graph both skip it.
    Raises `TrainingDataError`, as `sdk.trainer.TorchTrainer` does, with the same words: labels
    of another dtype than an integer one (floats with whole values included: torch refuses
    them, and a float array of labels is usually targets of another kind) are refused.
    """
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        raise TrainingDataError(f"{where}: y must hold integer class labels, got {arr.dtype}")
    check_labels(arr, classes, allow_ignore=allow_ignore, where=where)
    if allow_ignore and arr.size and bool((arr == IGNORE_INDEX).all()):
        # As in sdk.trainer: a zero update weighted by its examples, and a NaN mean loss.
        raise TrainingDataError(
            f"{where}: every label is {IGNORE_INDEX} (skipped): no example to train on"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def _batch_shape(shape: Sequence[int]) -> str:
    """A per-example shape with the batch first, as `sdk.trainer` prints shapes: [B, 28, 28]."""
    return f"[B{''.join(f', {k}' for k in shape)}]"


def _id(value: object) -> object:
    """A token id as the message shows it: a whole float as the integer it stands for."""
    return int(value) if isinstance(value, float | np.floating) else value


class OrtTrainer:
    """Minibatch SGD (or momentum SGD) driven by the exported training-step graph.

    Implements `sdk.LocalTrainer` with the same batching as `sdk.trainer.TorchTrainer`: each
    epoch draws ``rng.permutation(n)`` and walks it in batches of `batch_size`, keeping the last
    partial batch (the graph's batch dimension is dynamic, and its loss is the mean over the
    examples in that batch, as torch's). Momentum buffers start at zero on every `train` call,
    as a fresh ``torch.optim.SGD`` does. Sessions are created once and reused across calls, so
    one trainer serves many simulated devices.

    Loading checks the graphs' inputs and outputs against the manifest (`ArtifactError`);
    `classes` is the logits' last dimension, which bounds the class labels `train` and
    `evaluate` accept.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        threads: int = 1,
        optimization: str = "all",
    ) -> None:
        self.manifest = manifest
        # Training runs on `threads`; the inference graph (`predict`, `evaluate`) on one thread:
        # it is idle while a device trains, and each thread of its pool is an OS thread.
        options = {
            "train_step": session_options(threads, optimization),
            "infer": session_options(1, optimization),
        }
        # Loaded from the bytes `load_manifest` read (and hashed), not from the paths, which
        # onnxruntime would read again. External data is refused before any session reads it
        # (`_check_no_external_data`); the folder is named as well, so that onnxruntime itself
        # would resolve a path in the artifact folder, not in the working directory.
        for each in options.values():
            each.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(manifest.root)
            )
        providers = ["CPUExecutionProvider"]
        sessions = []
        for what in ("train_step", "infer"):
            _check_no_external_data(manifest.file_data[what], what)  # onnxruntime would read it
            try:
                sessions.append(
                    ort.InferenceSession(
                        manifest.file_data[what], options[what], providers=providers
                    )
                )
            except Exception as exc:  # onnxruntime raises its own untyped errors on a bad model
                raise ArtifactError(
                    f"{what}: onnxruntime refused the artifact: {_first_line(exc)}"
                ) from exc
        self._train, self._infer = sessions
        m = manifest
        for what in ("train_step", "infer"):
            _check_opset(m.file_data[what], m.opset, what)
        try:
            _check_names(
                self._train,
                [*m.param_inputs, *m.state_inputs, m.x_name, m.y_name, m.lr_name],
                m.train_outputs,
                "train_step",
            )
            _check_names(self._infer, [*m.param_inputs, m.x_name], m.infer_outputs, "infer")
            self.classes = _check_signature(self._train, self._infer, m)
        except ArtifactError:
            raise
        except Exception as exc:
            # onnxruntime hands names as str: a name (or a dimension's) that is not UTF-8 raised
            # UnicodeDecodeError while being read; the graph is at fault, whatever failed.
            raise ArtifactError(
                f"the graphs' inputs and outputs cannot be read: {type(exc).__name__}: "
                f"{_first_line(exc)}"
            ) from exc
        self._x_dtype = np.dtype(m.x_dtype)
        self._y_dtype = np.dtype(m.y_dtype)
        # Set once `train` has measured the graph's momentum against the manifest's.
        self._momentum_checked = not m.state_inputs

    def _check_momentum(
        self,
        params: list[npt.NDArray[np.float32]],
        zeros: list[npt.NDArray[np.float32]],
        x: npt.NDArray,
        y: npt.NDArray,
    ) -> None:
        """Raise `ArtifactError` unless the training step's momentum is the manifest's.

        The coefficient is a constant inside the graph, and the manifest's copy is what
        `check_matches` compares with the caller's: edited (the graphs' digests still match),
        it let a caller training with momentum 0.5 run steps that apply 0.9. Two steps with lr
        0 on one example, from buffers of 0 and of 1, measure it: the new buffer is
        ``momentum * buf + g``, so the two differ by the momentum. `train` runs this once, on
        its first example and the caller's parameters (`zeros` are its zero buffers): sizes
        it is about to train with anyway, so a manifest cannot make this allocate more; so
        does `check_matches` with a momentum, once the spec is the caller's, on zeros. Not at
        load: there nothing bounds the sizes but the manifest. A probe onnxruntime refuses, or
        that is not finite, measures nothing; the next call tries again.
        """
        ones = [np.ones_like(z) for z in zeros]
        try:
            _, _, plain = self.step(params, zeros, x, y, 0.0)
            _, _, pushed = self.step(params, ones, x, y, 0.0)
        except ValueError:  # the first training step raises it again, in context
            return
        del ones
        want = np.float32(self.manifest.momentum)
        seen, worst, measured_at_worst = False, 0.0, float(want)
        for g, b in zip(plain, pushed, strict=True):
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: not counted below
                measured = b - g  # float32 is enough: its rounding is far below the tolerance
                ok = np.isfinite(measured) & np.isfinite(g)
                if not ok.any():
                    continue
                seen = True
                excess = np.abs(measured - want) - _MOMENTUM_TOL * (1 + np.abs(g))
            excess[~ok] = -np.inf
            at = int(np.argmax(excess))
            if excess.flat[at] > worst:
                worst, measured_at_worst = float(excess.flat[at]), float(measured.flat[at])
        if worst > 0:
            raise ArtifactError(
                f"train_step: the graph trains with momentum {measured_at_worst:.6g}, the "
                f"manifest says {self.manifest.momentum}: the manifest was edited, or belongs "
                "to another export"
            )
        self._momentum_checked = seen

    @classmethod
    def from_dir(
        cls,
        path: str | os.PathLike[str],
        *,
        threads: int = 1,
        optimization: str = "all",
        verify: bool = True,
        max_file_bytes: int | None = None,
    ) -> OrtTrainer:
        """Load the artifacts `sdk.onnx_export` (or `plume export`) wrote to `path`.

        Each ONNX file may be at most `max_file_bytes` (None: 16 MiB, some 20 times the
        largest zoo graph; see `load_manifest`), checked before it is read.
        """
        manifest = load_manifest(path, verify=verify, max_file_bytes=max_file_bytes)
        return cls(manifest, threads=threads, optimization=optimization)

    @property
    def spec(self) -> ModelSpec:
        """The flat layout of the exported model's parameters (the manifest's), which
        `sdk.Client` compares with the task's before training."""
        return self.manifest.spec

    def check_matches(self, spec: ModelSpec, *, momentum: float | None = None) -> None:
        """Raise `ArtifactError` unless these artifacts train the model `spec` describes.

        For a caller that knows the model it means to train (a simulator's run, an app's task):
        artifacts exported from another model, or for another optimizer, would otherwise train
        a silently wrong update when the sizes happen to agree, or fail mid-round when they do
        not. `spec` must equal the manifest's (names, shapes and order); `momentum`, if given,
        is the SGD momentum the caller trains with (0.0 for plain SGD), which must be the one
        baked into the training step. For a momentum graph that is measured here (two steps on
        one example of zeros), not read off the manifest: see `_check_momentum`.
        """
        m = self.manifest
        if spec != m.spec:
            ours = [(e.name, e.shape) for e in m.spec.entries]
            theirs = [(e.name, e.shape) for e in spec.entries]
            first = next(
                (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                min(len(ours), len(theirs)),
            )
            where = (
                f"tensor {first}: {ours[first] if first < len(ours) else 'none'} in the "
                f"artifacts, {theirs[first] if first < len(theirs) else 'none'} in the model"
            )
            raise ArtifactError(
                f"the artifacts in {m.root} were exported from another model ({m.model}, "
                f"{m.spec.size} parameters; the model has {spec.size}): first difference at "
                f"{where}"
            )
        if momentum is not None and not self._momentum_checked:
            # The spec is the caller's, so its parameters are a size the caller holds anyway.
            if math.prod(m.x_shape) + math.prod(m.y_shape) <= _MAX_PROBE_VALUES:
                zeros = [np.zeros(e.shape, np.float32) for e in m.spec.entries]
                x = np.zeros((1, *m.x_shape), self._x_dtype)  # id 0 is in every vocabulary
                y = np.zeros((1, *m.y_shape), self._y_dtype)  # class 0 is in every model
                self._check_momentum(zeros, zeros, x, y)
        baked = m.momentum if m.optimizer == "momentum" else 0.0
        if momentum is not None and momentum != baked:
            raise ArtifactError(
                f"the artifacts in {m.root} train with momentum {baked} "
                f"(optimizer {m.optimizer!r}), the caller with {momentum}: re-export with "
                + (
                    "--optimizer sgd"
                    if momentum == 0
                    else f"--optimizer momentum --momentum {momentum}"
                )
            )

    def split(self, params: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        """Views of a flat float32[d] vector as the model's tensors, in spec order."""
        flat = np.ascontiguousarray(params, dtype=np.float32)
        if flat.shape != (self.spec.size,):
            raise ValueError(f"params of shape {flat.shape}, the model has {self.spec.size}")
        return [flat[e.offset : e.offset + e.size].reshape(e.shape) for e in self.spec.entries]

    def _check_x(self, x: npt.NDArray, where: str = "training data") -> npt.NDArray:
        """`x` as the graph's dtype, contiguous, after checking its per-example shape.

        A float graph without a vocabulary takes floating-point `x` only (float64 is cast to
        float32, the one documented difference from `sdk.trainer.TorchTrainer`): integer or
        bool inputs into it, such as raw uint8 pixels, are refused as torch refuses them, not
        cast and trained on unnormalized.

        Integer inputs are token ids, which only an Embedding reads among the supported layers,
        and so are float inputs with a vocabulary in the manifest (float32 ids read through
        `x.long()`, as mobile_sim's text datasets hold them): they must be whole numbers >= 0
        (and below the vocabulary, if recorded). Onnxruntime's gather would wrap a negative id
        to a row from the end where torch raises (ids past the end fail in onnxruntime, a
        ValueError). Ids read through ``F.one_hot`` instead would train silently past its
        classes (a row of zeros, where torch raises); the export refuses such a model unless
        it records a vocabulary (`sdk.onnx_export._refuse_data_checks`), so an integer graph
        without one holds no such op. Raises `TrainingDataError`.
        """
        m = self.manifest
        if self._x_dtype.kind == "i" or m.x_vocab is not None:
            try:
                arr = _whole_numbers(x, "token ids")
            except ValueError as exc:
                raise TrainingDataError(str(exc)) from None
            if arr.dtype == np.float16:
                # Exact in float32; numpy cast 2^63 (and a vocabulary past 65504) to float16,
                # inf with an overflow warning, to compare them with float16 ids.
                arr = arr.astype(np.float32)
            if arr.size and arr.min() < 0:
                raise TrainingDataError(f"token ids must be >= 0, got {_id(arr.min())}")
            # Floats compare with 2^63 itself: int64's largest converts to the float 2^63, so
            # an id of exactly 2^63 passed a `> iinfo.max` test and the cast wrapped it.
            top = 2.0**63 if arr.dtype.kind == "f" else np.iinfo(np.int64).max + 1
            if arr.size and arr.max() >= top:
                # The cast to int64 would wrap it (a uint64 2^64-1 to -1, a row from the end).
                raise TrainingDataError(f"token ids must be below 2^63, got {arr.max()}")
            vocab = m.x_vocab
            if vocab is not None and arr.size and arr.max() >= vocab:
                # Onnxruntime's gather failed at the batch holding one (a ValueError after
                # training the batches before it); `sdk.trainer`'s words.
                count = int(np.count_nonzero(arr >= vocab))
                raise TrainingDataError(
                    f"token ids must be below {vocab}, the model's vocabulary (the rows of the "
                    f"embedding reading them), got {_id(arr.max())} ({count} of {arr.size} ids "
                    "past it)"
                )
        if self._x_dtype.kind == "f" and m.x_vocab is None:
            given = x if isinstance(x, np.ndarray) else None
            if given is None:
                try:
                    given = np.asarray(x)
                except (TypeError, ValueError):  # ragged: refused below, in its words
                    given = None
            if given is not None and given.dtype.kind not in "f":
                # torch refuses them in the forward pass (`mat1 and mat2 must have the same
                # dtype`); cast, raw uint8 pixels trained unnormalized.
                raise TrainingDataError(
                    f"{where}: x of shape {list(given.shape)} ({given.dtype}) does not fit the "
                    f"model: it takes {self._x_dtype} inputs; scale and cast integer data to "
                    f"floats first"
                )
        try:
            xs = np.ascontiguousarray(x, dtype=self._x_dtype)
        except (TypeError, ValueError) as exc:  # objects, ragged lists, text that is no number
            raise TrainingDataError(
                f"x cannot be read as {self._x_dtype} values: {_first_line(exc)}"
            ) from None
        if xs.ndim != 1 + len(m.x_shape) or tuple(xs.shape[1:]) != m.x_shape:
            dtype = x.dtype if isinstance(x, np.ndarray) else np.asarray(x).dtype
            raise TrainingDataError(
                f"{where}: x of shape {list(xs.shape)} ({dtype}) does not fit the model: it "
                f"takes x of shape {_batch_shape(m.x_shape)}"
            )
        return xs

    def _check_y(self, y: npt.NDArray, n: int) -> npt.NDArray:
        """`y` as the graph's dtype after the checks `sdk.trainer.TorchTrainer` runs, in its
        words and order: one label per example, integer labels, shaped to the output, in
        range."""
        m = self.manifest
        where = "training data"
        if m.loss == "ce":
            arr = np.asarray(y)
            if arr.ndim == 0 or len(arr) != n:
                got = "a scalar" if arr.ndim == 0 else f"{len(arr)} labels"
                raise TrainingDataError(
                    f"{where}: x has {n} examples but y has {got} (shapes "
                    f"{[n, *m.x_shape]} and {list(arr.shape)}): one label per example"
                )
            if arr.dtype.kind not in "iu":
                raise TrainingDataError(
                    f"{where}: y must hold integer class labels, got {arr.dtype}"
                )
            if tuple(arr.shape[1:]) != m.y_shape:
                # torch's words, with the output as the graph gives it (classes last).
                out = [*m.y_shape, self.classes]
                raise TrainingDataError(
                    f"{where}: labels of shape {list(arr.shape)} do not fit the model's output "
                    f"{_batch_shape(out)}: cross-entropy takes one class index per "
                    f"prediction, shape {_batch_shape(m.y_shape)}"
                )
            ys = _labels(arr, self.classes, allow_ignore=True)
        else:
            try:
                ys = np.ascontiguousarray(y, dtype=self._y_dtype)
            except (TypeError, ValueError) as exc:
                raise TrainingDataError(
                    f"y cannot be read as {self._y_dtype} values: {_first_line(exc)}"
                ) from None
            bad = int(ys.size - np.count_nonzero(np.isfinite(ys)))
            if bad:  # NaN or inf targets train NaN parameters
                raise TrainingDataError(
                    f"training data: y: {bad} target values are NaN or infinite"
                )
        if ys.ndim != 1 + len(m.y_shape) or tuple(ys.shape[1:]) != m.y_shape:
            raise TrainingDataError(
                f"{where}: y of shape {list(ys.shape)} does not fit the model: it takes y of "
                f"shape {_batch_shape(m.y_shape)}"
            )
        if len(ys) != n:
            raise TrainingDataError(
                f"{where}: x has {n} examples but y has {len(ys)} labels (shapes "
                f"{[n, *m.x_shape]} and {list(ys.shape)}): one label per example"
            )
        return ys

    def check_data(self, x: npt.NDArray, y: npt.NDArray) -> None:
        """Raise `TrainingDataError` unless `train` can train on (x, y): the checks `train` runs
        once per call (shapes, dtypes, finite inputs, labels in range, at least one example).
        `sdk.Client.participate` calls it before asking for a round."""
        self._check_data(x, y)

    def _check_data(self, x: npt.NDArray, y: npt.NDArray) -> tuple[npt.NDArray, npt.NDArray]:
        """(x, y) as the graph's dtypes after `check_data`'s checks."""
        xs = self._check_x(x)
        if xs.ndim == 0 or len(xs) == 0:
            raise TrainingDataError("training data: a device needs at least one example to train")
        check_finite_inputs(xs, where="training data")  # NaN or inf would train NaN params
        return xs, self._check_y(y, len(xs))

    def step(
        self,
        params: list[npt.NDArray[np.float32]],
        state: list[npt.NDArray[np.float32]],
        x: npt.NDArray,
        y: npt.NDArray,
        lr: float,
    ) -> tuple[float, list[npt.NDArray[np.float32]], list[npt.NDArray[np.float32]]]:
        """One optimiser step on one batch: ``(loss, new params, new momentum state)``.

        The feeds go to onnxruntime as given (this is the hot loop): `x` and `y` must already
        have the graph's dtypes, and class labels must be in range. `train` checks both once.
        """
        m = self.manifest
        feeds: dict[str, npt.NDArray] = dict(zip(m.param_inputs, params, strict=True))
        feeds.update(zip(m.state_inputs, state, strict=True))
        feeds[m.x_name] = x
        feeds[m.y_name] = y
        feeds[m.lr_name] = np.asarray(lr, dtype=np.float32)
        try:
            out = self._train.run(None, feeds)
        except Exception as exc:  # onnxruntime's errors are untyped; the graph was checked
            raise ValueError(f"onnxruntime rejected the batch: {exc}") from exc
        n = len(m.param_inputs)
        return float(out[0]), list(out[1 : 1 + n]), list(out[1 + n :])

    def train(
        self,
        params: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
        cancel: CancelFlag | None = None,
    ) -> TrainResult:
        """Run `epochs` epochs from flat `params`; returns new float32[d] params, the number of
        examples that have a target (those whose labels are all -100 do not count: the FedAvg
        weight) and the mean loss, each step's weighted by the targets it counts (labels -100
        count none; NaN for `epochs` 0), as `sdk.trainer.TorchTrainer.train`. Raises
        `ValueError` for `params` holding NaN or inf and for a run whose loss becomes NaN or
        inf (diverged), with the same words. `cancel` is read before each step: once it is
        set, `train` raises `TrainingCancelled` without a result, within one step."""
        check_settings(epochs, batch_size, lr)
        check_rng(rng)
        xs, ys = self._check_data(x, y)
        n = len(xs)
        # Views of the caller's array, not copies: onnxruntime only reads its feeds and each
        # step returns fresh arrays, and the result is concatenated anew, so nothing ever
        # writes through these views or hands them back.
        tensors = self.split(params)
        check_start_params(params)
        per_example = None
        if self.manifest.loss == "ce" and bool((ys == IGNORE_INDEX).any()):
            per_example = (ys != IGNORE_INDEX).reshape(n, -1).sum(axis=1)
        state = [np.zeros_like(t) for t in tensors] if self.manifest.state_inputs else []
        if not self._momentum_checked:
            # An example with a target: one whose labels are all skipped has no gradient.
            i = 0 if per_example is None else int(np.flatnonzero(per_example)[0])
            self._check_momentum(tensors, state, xs[i : i + 1], ys[i : i + 1])
        total, count, steps = 0.0, 0, 0
        for epoch in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                if cancel is not None and cancel.is_set():
                    raise TrainingCancelled(steps)
                idx = order[start : start + batch_size]
                loss, tensors, state = self.step(tensors, state, xs[idx], ys[idx], lr)
                steps += 1
                # A batch whose labels are all skipped has a NaN loss (a mean over no target)
                # and a zero gradient: it counts nothing.
                weight = len(idx) if per_example is None else int(per_example[idx].sum())
                if weight and not math.isfinite(loss):
                    raise diverged(loss, steps, epoch + 1, lr)
                if weight:
                    total += loss * weight
                    count += weight
        flat = np.concatenate([t.reshape(-1) for t in tensors]).astype(np.float32, copy=False)
        check_trained_params(flat, steps, lr)
        # As `sdk.trainer`: the weight counts the examples that have a target; no step, no loss.
        weight = n if per_example is None else int(np.count_nonzero(per_example))
        return TrainResult(flat, weight, total / count if count else math.nan)

    def predict(
        self, params: npt.NDArray[np.float32], x: npt.NDArray, batch_size: int = 1000
    ) -> npt.NDArray[np.float32]:
        """Model outputs (logits) for `x`, in batches of `batch_size`."""
        return self._predict(params, x, batch_size, "prediction input")

    def _predict(
        self, params: npt.NDArray[np.float32], x: npt.NDArray, batch_size: int, where: str
    ) -> npt.NDArray[np.float32]:
        """`predict`, its errors naming `x` as `where` says."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        xs = self._check_x(x, where)
        feeds: dict[str, npt.NDArray] = dict(
            zip(self.manifest.param_inputs, self.split(params), strict=True)
        )
        parts = []
        for start in range(0, len(xs), batch_size):
            feeds[self.manifest.x_name] = xs[start : start + batch_size]
            try:
                parts.append(self._infer.run(None, feeds)[0])
            except Exception as exc:  # as in `step`
                raise ValueError(f"onnxruntime rejected the batch: {exc}") from exc
        if not parts:
            raise ValueError("no examples to predict")
        return np.concatenate(parts).astype(np.float32, copy=False)

    def evaluate(
        self, params: npt.NDArray[np.float32], x: npt.NDArray, y: npt.NDArray[np.int64]
    ) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of a classifier's `params` on a labelled set.

        `y` holds one class index per prediction: shaped like the logits without their last
        (class) dimension, so [B] for logits [B, C] and [B, T] for [B, T, C]. One-hot targets
        (as an MSE export trains on) are refused with a `ValueError`, not misread.
        """
        labels = _labels(y, self.classes, allow_ignore=False, where="evaluation data")
        logits = self._predict(params, x, 1000, "evaluation data").astype(np.float64)
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"labels of shape {list(labels.shape)}: the model's logits are "
                f"{list(logits.shape)}, so it takes one class index per prediction, shaped "
                f"{list(logits.shape[:-1])}"
            )
        if logits.ndim > 2:
            logits = logits.reshape(-1, logits.shape[-1])
            labels = labels.reshape(-1)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = float(-log_probs[np.arange(len(labels)), labels].mean())
        accuracy = float((logits.argmax(axis=1) == labels).mean())
        return accuracy, loss
