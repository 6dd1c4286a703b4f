"""Full-model snapshots for download (fp16 or fp32 + zstd), canonical bytes and the model digest."""

from __future__ import annotations

import hashlib
import struct
import threading

import numpy as np
import numpy.typing as npt

from ._bits import ByteView
from ._config import DecodeLimits, check_zstd_level
from ._errors import (
    ChecksumMismatch,
    MalformedHeader,
    NonFiniteValues,
    SpecMismatch,
    TrailingBytes,
    TruncatedFrame,
)
from ._quant import first_non_finite
from ._spec import ModelSpec
from ._wire import SNAPSHOT_MAGIC, WIRE_VERSION, byte_view, check_prefix, check_size, check_u32
from ._zstd import ZstdCodec

__all__ = [
    "encode_snapshot",
    "decode_snapshot",
    "canonical_bytes",
    "model_digest",
    "SNAPSHOT_DTYPES",
    "snapshot_dtype",
]

F32 = npt.NDArray[np.float32]

# wire id -> (name, numpy little-endian dtype, bytes per scalar)
SNAPSHOT_DTYPES: dict[int, tuple[str, str, int]] = {1: ("fp16", "<f2", 2), 2: ("fp32", "<f4", 4)}
_DTYPE_IDS = {name: wid for wid, (name, _, _) in SNAPSHOT_DTYPES.items()}
# magic, version, dtype, header_len | fingerprint | d | payload bytes | SHA-256
_HEADER = struct.Struct("<4sBBH8sII32s")
SNAPSHOT_HEADER_LEN = _HEADER.size  # 56
# Where the header's dtype id sits: after the magic and the version byte.
_DTYPE_AT = struct.calcsize("<4sB")

# Shared codecs, one per (level, window cap); each keeps its zstd contexts per thread.
_codecs: dict[tuple[int, int], ZstdCodec] = {}
_codecs_lock = threading.Lock()


def _zstd(level: int, max_window: int) -> ZstdCodec:
    with _codecs_lock:
        codec = _codecs.get((level, max_window))
        if codec is None:
            codec = _codecs[(level, max_window)] = ZstdCodec(level, max_window)
        return codec


def _as_params(params: npt.ArrayLike, spec: ModelSpec | None = None) -> F32:
    arr = np.asarray(params)
    if arr.ndim != 1 or arr.dtype != np.float32:
        raise ValueError(f"params must be a 1-D float32 array, got {arr.dtype}{list(arr.shape)}")
    if spec is not None and arr.shape[0] != spec.size:
        raise ValueError(f"params have {arr.shape[0]} scalars; the spec has {spec.size}")
    return arr


def canonical_bytes(params: npt.ArrayLike) -> bytes:
    """float32[d] as little-endian fp32 bytes: what both sides hash."""
    return _as_params(params).astype("<f4", copy=False).tobytes()


def model_digest(params: npt.ArrayLike) -> bytes:
    """SHA-256 (32 bytes) of `canonical_bytes(params)`."""
    return hashlib.sha256(canonical_bytes(params)).digest()


def encode_snapshot(
    params: npt.ArrayLike,
    spec: ModelSpec,
    dtype: str = "fp16",
    level: int = 3,
    limits: DecodeLimits | None = None,
) -> bytes:
    """A snapshot of float32[d] `params`: header, then one zstd frame of fp16 or fp32 values.

    The header carries the SHA-256 of the canonical bytes of the params as the receiver will
    decode them (after fp16 rounding), so `decode_snapshot` verifies what it returns.

    `limits` are the receiver's `DecodeLimits` (None: the defaults, as `decode_snapshot`).
    The zstd window stays within `limits.zstd_max_window`, and a snapshot above
    `limits.frame_cap(spec)` bytes is refused with ValueError, since the receiver would refuse
    it. Under the default limits nothing is refused: the cap leaves d/8 + 1024 bytes above 4d,
    more than zstd's worst-case growth (d/64 + 64 bytes and its frame header) plus this header.
    `level` is an int in [-7, 22], as `CodecConfig.zstd_level` (else ValueError).
    """
    lim = limits if limits is not None else DecodeLimits()
    check_zstd_level(level, "level")
    arr = _as_params(params, spec)
    if dtype not in _DTYPE_IDS:
        raise ValueError(f"dtype must be one of {sorted(_DTYPE_IDS)}, got {dtype!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("params contain NaN or Inf")
    wid = _DTYPE_IDS[dtype]
    with np.errstate(over="ignore"):
        stored = arr.astype(SNAPSHOT_DTYPES[wid][1])
    if not np.all(np.isfinite(stored)):
        raise ValueError("a parameter exceeds the fp16 range; use dtype='fp32'")
    digest = model_digest(stored.astype(np.float32))
    payload = _zstd(level, lim.zstd_max_window).compress(stored.tobytes())
    total, cap = SNAPSHOT_HEADER_LEN + len(payload), lim.frame_cap(spec)
    if total > cap:
        raise ValueError(
            f"the {dtype} snapshot of {total} bytes is above the receiver's cap of {cap} bytes "
            "(DecodeLimits.max_frame_bytes), which would refuse it: raise the cap"
            + (", or use dtype='fp16'" if dtype == "fp32" else "")
        )
    header = _HEADER.pack(
        SNAPSHOT_MAGIC, WIRE_VERSION, wid, SNAPSHOT_HEADER_LEN, spec.fingerprint, spec.size,
        check_u32(len(payload), "snapshot payload"), digest,
    )  # fmt: skip
    return header + payload


def snapshot_dtype(data: bytes) -> str | None:
    """The value type a snapshot's header names ("fp16" or "fp32"), read from its dtype id
    alone (nothing else is checked: `decode_snapshot` does that); None when `data` is too
    short to hold the id or the id is unknown."""
    if len(data) <= _DTYPE_AT:
        return None
    entry = SNAPSHOT_DTYPES.get(data[_DTYPE_AT])
    return None if entry is None else entry[0]


def decode_snapshot(data: ByteView, spec: ModelSpec, limits: DecodeLimits | None = None) -> F32:
    """float32[d] from a snapshot, checked against `spec` and `limits` before inflating."""
    lim = limits if limits is not None else DecodeLimits()
    if not isinstance(data, bytes):
        view = byte_view(data, "snapshot")
        check_size(view.nbytes, lim.frame_cap(spec), "snapshot")
        data = bytes(view)
    check_size(len(data), lim.frame_cap(spec), "snapshot")
    header_len = check_prefix(data, SNAPSHOT_MAGIC, "snapshot", lim.max_header_bytes)
    if header_len != SNAPSHOT_HEADER_LEN:
        raise MalformedHeader(
            f"v1 snapshot header is {SNAPSHOT_HEADER_LEN} bytes, got {header_len}"
        )
    if len(data) < SNAPSHOT_HEADER_LEN:
        raise TruncatedFrame(f"snapshot of {len(data)} bytes ends inside its header")
    _m, _v, wid, _hl, fingerprint, d, payload_bytes, digest = _HEADER.unpack_from(data)
    if wid not in SNAPSHOT_DTYPES:
        raise MalformedHeader(f"unknown snapshot dtype id {wid}")
    if fingerprint != spec.fingerprint:
        raise SpecMismatch(
            f"snapshot is for spec {fingerprint.hex()}, this decoder has {spec.fingerprint.hex()}"
        )
    if d != spec.size:
        raise SpecMismatch(f"snapshot declares d={d}; the spec has {spec.size} scalars")
    total = SNAPSHOT_HEADER_LEN + payload_bytes
    if len(data) < total:
        raise TruncatedFrame(f"snapshot of {len(data)} bytes; its header declares {total}")
    if len(data) > total:
        raise TrailingBytes(f"{len(data) - total} bytes after the declared {total}-byte snapshot")
    _, np_dtype, width = SNAPSHOT_DTYPES[wid]
    raw = _zstd(3, lim.zstd_max_window).decompress(
        memoryview(data)[SNAPSHOT_HEADER_LEN:], width * d
    )
    values = np.frombuffer(raw, dtype=np_dtype).astype(np.float32)
    bad = first_non_finite(values)
    if bad is not None:
        raise NonFiniteValues(f"NaN or Inf at parameter {bad}")
    if model_digest(values) != digest:
        raise ChecksumMismatch("snapshot SHA-256 does not match its decoded parameters")
    return values
