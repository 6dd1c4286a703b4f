"""The manifest of an exported training artifact directory: parsed and checked, torch-free."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compression import ModelSpec

__all__ = ["ArtifactError", "Manifest", "MANIFEST_NAME", "load_manifest"]

MANIFEST_NAME = "manifest.json"
_FORMAT = "plume-onnx-train"
_VERSIONS = (1,)
_MAX_MANIFEST_BYTES = 1 << 22  # 4 MiB: a manifest lists names and shapes, never weights
_DTYPES = ("float32", "int64")
# An ONNX file holds the graph, never the weights (they are inputs): the largest zoo graph is
# the 80-step unrolled LSTM's training step, the train_step.onnx that `plume export --model
# shakespeare_lstm` writes (about 786 KB, its summary's train_step_bytes; some 10 KB a time
# step), mnist_cnn's training step 11 KB. The cap bounds what a received manifest can make the
# device read, hash and hand to onnxruntime; 16 MiB is some 20 times the LSTM (an unrolled
# sequence of some 1,700 steps) and a small allocation even on a phone.
# `load_manifest(max_file_bytes=...)` takes another.
_MAX_FILE_BYTES = 1 << 24  # 16 MiB
_TARGET_DTYPE = {"ce": "int64", "mse": "float32"}


class ArtifactError(Exception):
    """The artifact directory is missing, malformed, tampered with or inconsistent."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """What `sdk.onnx_export` wrote: names of every graph input and output, and the flat layout.

    `spec` orders the parameters as the flat vector does (``named_parameters()`` order);
    `param_inputs[i]` is the graph input holding tensor `spec.entries[i]`.
    """

    root: Path
    model: str
    opset: int
    loss: str
    optimizer: str
    momentum: float
    spec: ModelSpec
    param_inputs: tuple[str, ...]
    state_inputs: tuple[str, ...]
    x_name: str
    x_dtype: str
    x_shape: tuple[int, ...]  # without the batch dimension
    y_name: str
    y_dtype: str
    y_shape: tuple[int, ...]  # without the batch dimension
    lr_name: str
    train_outputs: tuple[str, ...]
    infer_outputs: tuple[str, ...]
    train_path: Path
    infer_path: Path
    file_bytes: dict[str, int]
    # The ONNX files' contents, read once by `load_manifest` (and hashed there with `verify`):
    # onnxruntime is handed these bytes, never the paths, so what was checked is what runs even
    # if a file changes on disk afterwards (a re-export, a partial copy).
    file_data: dict[str, bytes] = field(repr=False, compare=False)
    # How many token ids `x` may hold (`x.vocab`: the rows of the embedding reading it; int64
    # ids, or float32 ids read through `x.long()`), so ids past it are refused before
    # training; None in manifests without it (older exports, which recorded it for int64 only,
    # float features, or no embedding reading x itself).
    x_vocab: int | None = None
    # Whether `model` is the name the export was given (`model_name=`, `plume export --model`),
    # which `sdk.Client` compares with a task's model name; False where the export fell back
    # to the module's class name, and in manifests without `model_named` (older exports).
    model_named: bool = False

    @property
    def artifact_bytes(self) -> int:
        """Total size of the ONNX files (bytes)."""
        return sum(self.file_bytes.values())


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice (json keeps the last one silently,
    where another reader of the same file may take the first)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def _get(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ArtifactError(f"manifest: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ArtifactError(f"manifest: field {key!r} has the wrong type")
    return value


def _names(obj: Any, key: str) -> tuple[str, ...]:
    items = _get(obj, key, list)
    if not all(isinstance(s, str) and s for s in items):
        raise ArtifactError(f"manifest: {key!r} must list non-empty strings")
    return tuple(items)


def _tensor(obj: Any, key: str) -> tuple[str, str, tuple[int, ...]]:
    desc = _get(obj, key, dict)
    name = _get(desc, "name", str)
    dtype = _get(desc, "dtype", str)
    if dtype not in _DTYPES:
        raise ArtifactError(f"manifest: {key} dtype {dtype!r} not one of {_DTYPES}")
    shape = _get(desc, "shape", list)
    if not shape or shape[0] != "batch":
        raise ArtifactError(f"manifest: {key} shape must start with the 'batch' dimension")
    dims = shape[1:]
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ArtifactError(f"manifest: {key} dimensions must be positive integers")
    return name, dtype, tuple(dims)


def _file(root: Path, files: Any, key: str, verify: bool, cap: int) -> tuple[Path, bytes]:
    """The path and contents of ONNX file `key`, after the path, size (at most `cap` bytes)
    and digest checks."""
    entry = _get(files, key, dict)
    rel = _get(entry, "path", str)
    if not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
        raise ArtifactError(f"manifest: file {rel!r} must be a plain name inside the directory")
    try:
        path = root / rel
        if not path.is_file():
            # A folder (or a FIFO) under the name is there, just not a file the device can load.
            what = "is not a regular file" if path.exists() else "is missing"
            raise ArtifactError(f"artifact file {path} {what}")
        # A symlink (or a linked parent) could point the device at any file it can read.
        if not path.resolve().is_relative_to(root.resolve()):
            raise ArtifactError(f"manifest: file {rel!r} resolves outside the directory")
        size = path.stat().st_size
    except (ValueError, OSError) as exc:  # e.g. a NUL byte in the name
        raise ArtifactError(f"manifest: unusable file name {rel!r}: {exc}") from exc
    declared = _get(entry, "bytes", int)
    digest = _get(entry, "sha256", str) if verify else ""
    if size != declared:
        # A declared size past the cap is shown as such, not as its (up to 4,300) digits.
        said = declared if declared <= cap else f"more than {cap}"
        raise ArtifactError(f"{rel}: {size} bytes on disk, manifest says {said}")
    if size > cap:
        raise ArtifactError(
            f"{rel}: {size} bytes, more than the {cap} allowed (max_file_bytes; Plume's "
            f"largest zoo graph, the train_step.onnx that `plume export --model "
            f"shakespeare_lstm` writes, is about 786 KB)"
        )
    try:
        with path.open("rb") as f:
            data = f.read(size + 1)  # one byte more shows a file that grew since the stat
    except OSError as exc:
        raise ArtifactError(f"{rel}: unreadable: {exc}") from exc
    if len(data) != size:
        raise ArtifactError(f"{rel}: changed while being read ({len(data)} bytes, not {size})")
    if verify and hashlib.sha256(data).hexdigest() != digest:
        raise ArtifactError(f"{rel}: SHA-256 does not match the manifest")
    return path, data


def _check_cap(max_file_bytes: object) -> int:
    """`max_file_bytes` (None: `_MAX_FILE_BYTES`) as an int; `ValueError` unless a positive
    integer (a bool or a float is no byte count)."""
    if max_file_bytes is None:
        return _MAX_FILE_BYTES
    if isinstance(max_file_bytes, int) and not isinstance(max_file_bytes, bool):
        if max_file_bytes >= 1:
            return max_file_bytes
    raise ValueError(f"max_file_bytes must be a positive integer, got {max_file_bytes!r}")


def load_manifest(
    directory: str | os.PathLike[str], *, verify: bool = True, max_file_bytes: int | None = None
) -> Manifest:
    """Read and check ``manifest.json`` in `directory`, and read the two ONNX files it names.

    With `verify`, the files' SHA-256 must match the manifest's. Their contents are kept in
    `Manifest.file_data` (kilobytes: the weights are not in them) for `OrtTrainer` to load.
    Each file may be at most `max_file_bytes` (default 16 MiB, some 20 times the largest zoo
    graph), checked before it is read (`ArtifactError`); `ValueError` for a cap that is not a
    positive integer.
    """
    cap = _check_cap(max_file_bytes)
    root = Path(directory)
    path = root / MANIFEST_NAME
    if not path.is_file():
        if root.name == MANIFEST_NAME and root.is_file():
            # The manifest's own path: the artifacts are its folder.
            raise ArtifactError(
                f"{root} is the manifest, not the artifacts' directory: pass its folder, "
                f"{root.parent}"
            )
        if not root.exists():
            why = "no such directory"
        elif not root.is_dir():
            why = "it is a file, not a directory"
        else:
            why = "the directory holds no export"
        raise ArtifactError(
            f"no {MANIFEST_NAME} in {root}: {why}; write the artifacts with "
            f"`plume export --model NAME --out {root}` (docs/devices.md)"
        )
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_MANIFEST_BYTES + 1)  # a file that grew since the stat stays capped
    except OSError as exc:
        raise ArtifactError(f"{path}: unreadable: {exc}") from exc
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    # ValueError also covers an integer past Python's 4300-digit conversion limit, and
    # `_unique_keys`' refusal.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path}: not valid JSON: {exc}") from exc
    if _get(data, "format", str) != _FORMAT:
        raise ArtifactError(f"{path}: not a {_FORMAT} manifest")
    version = _get(data, "version", int)
    if version not in _VERSIONS:
        raise ArtifactError(f"{path}: manifest version {version} unsupported ({_VERSIONS})")
    try:
        spec = ModelSpec.from_json(_get(data, "spec", list))
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"manifest: bad spec: {exc}") from exc
    if _get(data, "spec_fingerprint", str) != spec.fingerprint.hex():
        raise ArtifactError("manifest: spec fingerprint does not match its spec")
    if _get(data, "num_params", int) != spec.size:
        raise ArtifactError(f"manifest: num_params does not match its spec ({spec.size})")
    opt = _get(data, "optimizer", dict)
    optimizer = _get(opt, "name", str)
    try:
        momentum = float(_get(opt, "momentum", (int, float)))
    except OverflowError as exc:  # an integer too large for a float
        raise ArtifactError(f"manifest: unsupported optimizer {opt!r}") from exc
    if optimizer not in ("sgd", "momentum") or not (0.0 <= momentum < 1.0):
        raise ArtifactError(f"manifest: unsupported optimizer {opt!r}")
    loss = _get(data, "loss", str)
    if loss not in ("ce", "mse"):
        raise ArtifactError(f"manifest: unsupported loss {loss!r}")
    params = _names(data, "param_inputs")
    state = _names(data, "state_inputs")
    if len(params) != len(spec.entries):
        raise ArtifactError("manifest: one parameter input per spec entry is required")
    if len(state) != (len(params) if optimizer == "momentum" else 0):
        raise ArtifactError("manifest: momentum needs one state input per parameter")
    x_name, x_dtype, x_shape = _tensor(data, "x")
    x_vocab = _get(data, "x", dict).get("vocab")
    if x_vocab is not None and (
        isinstance(x_vocab, bool) or not isinstance(x_vocab, int) or not 1 <= x_vocab < 2**63
    ):
        # Ids are int64; a larger count (10^400 overflowed comparing float ids) bounds nothing.
        raise ArtifactError("manifest: x vocab must be an integer in [1, 2^63) (token ids)")
    if x_vocab is not None and x_dtype not in ("int64", "float32"):
        raise ArtifactError("manifest: x vocab is for int64 or float32 token ids only")
    if x_vocab is not None and x_dtype == "float32" and x_vocab > 2**24:
        # float32 holds every whole number only up to 2^24: larger ids would be rounded.
        raise ArtifactError("manifest: x vocab past 2^24 needs int64 token ids, not float32")
    if x_vocab is not None:
        # The export records the rows of the `nn.Embedding` reading x: the first dimension of
        # its [rows, dim] weight, which the spec holds. Edited (17 to 100), the device's check
        # let ids past the table through, and onnxruntime's gather failed at the batch holding
        # one, after the batches before it had trained.
        rows = sorted({e.shape[0] for e in spec.entries if len(e.shape) == 2})
        if x_vocab not in rows:
            raise ArtifactError(
                f"manifest: x vocab {x_vocab} is the row count of no embedding table in the "
                f"spec (its 2-D tensors have {rows or 'no'} rows): the manifest was edited, "
                "or belongs to another export"
            )
    y_name, y_dtype, y_shape = _tensor(data, "y")
    if y_dtype != _TARGET_DTYPE[loss]:
        raise ArtifactError(f"manifest: loss {loss!r} takes {_TARGET_DTYPE[loss]} targets")
    outputs = _names(data, "train_outputs")
    if len(outputs) != 1 + len(params) + len(state):
        raise ArtifactError("manifest: train outputs must be loss, new params, new state")
    opset = _get(data, "opset", int)
    if opset < 1:
        raise ArtifactError(f"manifest: opset {opset} is not a version")
    if not math.isfinite(momentum):
        raise ArtifactError("manifest: momentum must be finite")
    model = _get(data, "model", str)
    model_named = _get(data, "model_named", bool) if "model_named" in data else False
    lr_name = _get(data, "lr", str)
    infer_outputs = _names(data, "infer_outputs")
    # The graphs last, once every other field has passed: reading one can mean hashing up to
    # `max_file_bytes`, work for nothing if the manifest is refused anyway.
    files = _get(data, "files", dict)
    train_path, train_data = _file(root, files, "train_step", verify, cap)
    infer_path, infer_data = _file(root, files, "infer", verify, cap)
    return Manifest(
        root=root,
        model=model,
        opset=opset,
        loss=loss,
        optimizer=optimizer,
        momentum=momentum,
        spec=spec,
        param_inputs=params,
        state_inputs=state,
        x_name=x_name,
        x_dtype=x_dtype,
        x_shape=x_shape,
        y_name=y_name,
        y_dtype=y_dtype,
        y_shape=y_shape,
        lr_name=lr_name,
        train_outputs=outputs,
        infer_outputs=infer_outputs,
        train_path=train_path,
        infer_path=infer_path,
        file_bytes={"train_step": len(train_data), "infer": len(infer_data)},
        file_data={"train_step": train_data, "infer": infer_data},
        x_vocab=x_vocab,
        model_named=model_named,
    )
