"""Aggregator state to bytes and back, exactly and without pickle (persisted by the service).

A stateful aggregator (DP round counter, adaptive clip, server momentum, collusion histories,
...) keeps its state as a tree of tuples, lists, dicts, scalars, numpy arrays and two known
dataclasses. `encode_state` writes the tree's shape as JSON and the arrays' bytes after it;
`decode_state` rebuilds the same tree, bit for bit (floats travel as their hex form, so NaN,
infinities and every last bit survive). Only the types listed here can be written or read:
the blob names no code to run, and every declared array size is checked against the blob's
length before anything is allocated.

Layout: `b"PLAS"`, version u8, JSON length u32 LE, the JSON, then the array bytes. A JSON node
is a scalar (null, bool, int, string) or an object with a type tag `t`:
`f` float (`v`: float.hex), `tuple` / `list` (`v`: nodes), `dict` (`k`, `v`: key and value
nodes), `nd` array (`d` dtype, `s` shape, `o` offset into the array bytes, `n` byte count),
`ns` numpy scalar (`d` dtype, `v` hex bytes), `dc` dataclass (`c` class name, `f` fields).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import typing
from typing import Any

import numpy as np

from ._backdoor import CollusionState, DeviceHistory

__all__ = ["StateCodecError", "encode_state", "decode_state", "MAX_STATE_BYTES"]

MAGIC = b"PLAS"
VERSION = 1
_HEAD = struct.Struct("<4sBI")
# Far above any real state (a collusion history of 1,000 devices x 8,192 values is ~100 MB
# only at absurd settings); a bound so a corrupt length cannot ask for more.
MAX_STATE_BYTES = 1 << 31
_MAX_DEPTH = 64
_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "<u4", "<u8", "|u1", "|i1", "|b1"})
_DATACLASSES: dict[str, type] = {"CollusionState": CollusionState, "DeviceHistory": DeviceHistory}
# Each stored dataclass's field annotations, resolved once (`decode_state` checks every
# decoded field against them, `_dataclass`; a state holds a history per device).
_FIELD_HINTS: dict[type, dict[str, Any]] = {
    cls: typing.get_type_hints(cls) for cls in _DATACLASSES.values()
}


class StateCodecError(ValueError):
    """The state holds a type this codec does not write, or the blob is malformed."""


def encode_state(state: Any) -> bytes:
    """The state tree as bytes (see the module docstring); `StateCodecError` for other types."""
    chunks: list[bytes] = []
    offset = 0

    def node(v: Any, depth: int) -> Any:
        nonlocal offset
        if depth > _MAX_DEPTH:
            raise StateCodecError("state nested too deeply")
        if v is None or isinstance(v, bool | str):
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return {"t": "f", "v": v.hex()}
        if isinstance(v, np.ndarray):
            arr = v if v.flags.c_contiguous else np.array(v, order="C")  # keeps 0-d shapes
            dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
            if dt.str not in _DTYPES:
                raise StateCodecError(f"array dtype {arr.dtype} is not stored")
            raw = arr.astype(dt, copy=False).tobytes()
            out = {"t": "nd", "d": dt.str, "s": list(arr.shape), "o": offset, "n": len(raw)}
            chunks.append(raw)
            offset += len(raw)
            return out
        if isinstance(v, np.generic):
            arr = np.asarray(v)
            if arr.dtype.str not in _DTYPES:
                raise StateCodecError(f"numpy scalar {arr.dtype} is not stored")
            return {"t": "ns", "d": arr.dtype.str, "v": arr.tobytes().hex()}
        if isinstance(v, tuple | list):
            return {"t": type(v).__name__, "v": [node(x, depth + 1) for x in v]}
        if isinstance(v, dict):
            keys = list(v)
            return {
                "t": "dict",
                "k": [node(k, depth + 1) for k in keys],
                "v": [node(v[k], depth + 1) for k in keys],
            }
        name = type(v).__name__
        if dataclasses.is_dataclass(v) and _DATACLASSES.get(name) is type(v):
            fields = {f.name: node(getattr(v, f.name), depth + 1) for f in dataclasses.fields(v)}
            return {"t": "dc", "c": name, "f": fields}
        raise StateCodecError(f"state holds a {type(v).__qualname__}, which is not stored")

    tree = json.dumps(node(state, 0), separators=(",", ":")).encode()
    blob = _HEAD.pack(MAGIC, VERSION, len(tree)) + tree + b"".join(chunks)
    if len(blob) > MAX_STATE_BYTES:
        raise StateCodecError(f"state of {len(blob)} bytes is above {MAX_STATE_BYTES}")
    return blob


def decode_state(blob: bytes) -> Any:
    """The state tree `encode_state` wrote; `StateCodecError` for anything else."""
    if len(blob) < _HEAD.size or len(blob) > MAX_STATE_BYTES:
        raise StateCodecError(f"state blob of {len(blob)} bytes")
    magic, version, n_json = _HEAD.unpack_from(blob)
    if magic != MAGIC or version != VERSION:
        raise StateCodecError("not an aggregator state blob (magic or version)")
    if n_json > len(blob) - _HEAD.size:
        raise StateCodecError("declared JSON length runs past the blob")
    data = memoryview(blob)[_HEAD.size + n_json :]
    try:
        tree = json.loads(bytes(blob[_HEAD.size : _HEAD.size + n_json]))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, a 5,000-digit int
        raise StateCodecError(f"state JSON does not parse: {exc}") from None

    def value(n: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise StateCodecError("state nested too deeply")
        if n is None or isinstance(n, bool | str | int):
            return n
        if not isinstance(n, dict) or not isinstance(n.get("t"), str):
            raise StateCodecError(f"unexpected state node {str(n)[:40]!r}")
        t = n["t"]
        try:
            if t == "f":
                return float.fromhex(n["v"])
            if t in ("tuple", "list"):
                items = [value(x, depth + 1) for x in n["v"]]
                return tuple(items) if t == "tuple" else items
            if t == "dict":
                keys, vals = n["k"], n["v"]
                if len(keys) != len(vals):
                    raise StateCodecError("dict node with unequal keys and values")
                return {
                    value(k, depth + 1): value(x, depth + 1)
                    for k, x in zip(keys, vals, strict=True)
                }
            if t == "nd":
                return _array(n, data)
            if t == "ns":
                if n["d"] not in _DTYPES:
                    raise StateCodecError(f"numpy scalar dtype {n['d']!r} is not stored")
                raw = bytes.fromhex(n["v"])
                dt = np.dtype(n["d"])
                if len(raw) != dt.itemsize:
                    raise StateCodecError("numpy scalar of the wrong size")
                return np.frombuffer(raw, dtype=dt)[0]
            if t == "dc":
                cls = _DATACLASSES.get(n["c"])
                if cls is None:
                    raise StateCodecError(f"dataclass {n['c']!r} is not stored")
                fields = {k: value(v, depth + 1) for k, v in n["f"].items()}
                return _dataclass(cls, fields)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            # AttributeError: a "dc" node's fields not an object; OverflowError: float.fromhex
            # past float's range. Both must come out as StateCodecError, as the rest do.
            if isinstance(exc, StateCodecError):
                raise
            raise StateCodecError(f"malformed {t!r} node: {exc}") from None
        raise StateCodecError(f"unknown state node type {t!r}")

    return value(tree, 0)


def _dataclass(cls: type, fields: dict[str, Any]) -> Any:
    """`cls(**fields)`, each field of the kind its annotation names (an int, an array of that
    dtype, a dict of such values): a blob whose fields do not fit (`values` an int, say) is a
    `StateCodecError` here, not an error of the aggregator that later reads the state."""
    hints = _FIELD_HINTS[cls]
    for name, v in fields.items():
        if name in hints and not _fits(v, hints[name]):
            raise StateCodecError(f"{cls.__name__}.{name} is not {_kind(hints[name])}: {v!r:.60}")
    return cls(**fields)


def _fits(v: Any, hint: Any) -> bool:
    """Whether `v` is of the kind `hint` (a dataclass field's annotation) names; Any fits all."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if origin is np.ndarray:
        return isinstance(v, np.ndarray) and v.dtype == _dtype(hint)
    if origin is dict:
        return isinstance(v, dict) and all(
            _fits(k, args[0]) and _fits(x, args[1]) for k, x in v.items()
        )
    if hint is str:
        return isinstance(v, str)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(v, hint)
    return True


def _kind(hint: Any) -> str:
    """`hint` in words, for `_dataclass`'s error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is np.ndarray:
        return f"an array of {_dtype(hint).name}"
    if origin is dict:
        return f"a dict of {_kind(args[0])} to {_kind(args[1])}"
    return f"a {getattr(hint, '__name__', hint)}"


def _dtype(hint: Any) -> np.dtype[Any]:
    """The dtype an array annotation names: npt.NDArray[np.int64] is ndarray[Any, dtype[int64]]."""
    dtype: np.dtype[Any] = np.dtype(typing.get_args(typing.get_args(hint)[1])[0])
    return dtype


def _array(n: dict[str, Any], data: memoryview) -> np.ndarray:
    dtype, shape, off, size = n["d"], n["s"], n["o"], n["n"]
    if dtype not in _DTYPES:
        raise StateCodecError(f"array dtype {dtype!r} is not stored")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise StateCodecError("array shape must be a list of non-negative ints")
    if not (isinstance(off, int) and isinstance(size, int) and 0 <= off and 0 <= size):
        raise StateCodecError("array offset and size must be non-negative ints")
    dt = np.dtype(dtype)
    if math.prod(shape) * dt.itemsize != size or off + size > len(data):
        raise StateCodecError("array size does not match its shape or runs past the blob")
    return np.frombuffer(data[off : off + size], dtype=dt).reshape(shape).copy()
