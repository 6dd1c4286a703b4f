"""The residual file and the snapshot with numeric header fields or values at the extremes
(0, 2^31, 2^32 - 1, 65535, NaN, Inf, float32's max, subnormals, -0.0): a `CodecError`
subclass, never another exception or an allocation by the declared size, or finite values
(stop 57, helper C)."""

from __future__ import annotations

import math
import struct
import tracemalloc
import zlib

import numpy as np
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import CodecError, ErrorFeedback, ModelSpec, decode_snapshot, encode_snapshot

SPEC = ModelSpec.from_shapes([("w", (6,))])
D = SPEC.size
F32_MAX = float(np.finfo(np.float32).max)
VALUES = [0.0, -0.0, 1e-45, -1e-45, 1.0, F32_MAX, -F32_MAX, 65504.0, math.nan, math.inf, -math.inf]
U8 = [0, 1, 2, 3, 127, 255]
U16 = [0, 15, 16, 17, 56, 57, 4096, 4097, 65535]
U32 = [0, 1, D - 1, D, D + 1, 2**31, 2**32 - 1]


def _residual(values: list[float]) -> bytes:
    ef = ErrorFeedback(D)
    ef.residual = np.array(values, dtype=np.float32)
    return ef.to_bytes()


# (offset, struct format, candidate values) of the residual header (docs/wire-format.md 3)
RESIDUAL_FIELDS = {
    "version": (4, "B", U8),
    "flags": (5, "B", U8),
    "header_len": (6, "H", U16),
    "d": (8, "I", U32),
    "crc": (12, "I", [0, 2**32 - 1]),
}


def _limited(call: object) -> tuple[object, int]:
    """`call()`'s result or the CodecError it raised, and the peak it allocated (bytes)."""
    tracemalloc.start()
    try:
        try:
            result: object = call()  # type: ignore[operator]
        except CodecError as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@settings(max_examples=200)
@given(
    values=st.lists(st.sampled_from(VALUES), min_size=D, max_size=D),
    field=st.sampled_from([None, *RESIDUAL_FIELDS]),
    pick=st.integers(0, 100),
    size=st.sampled_from([D, 1, 2**31]),
)
def test_residual_file_at_the_extremes(
    values: list[float], field: str | None, pick: int, size: int
) -> None:
    finite = [v if math.isfinite(v) else 0.0 for v in values]
    data = bytearray(_residual(finite))
    struct.pack_into(f"<{D}f", data, 16, *values)  # values as given, NaN and Inf included
    struct.pack_into("<I", data, 12, zlib.crc32(bytes(data[16:])))  # the CRC that fits them
    if field is not None:
        off, fmt, pool = RESIDUAL_FIELDS[field]
        struct.pack_into("<" + fmt, data, off, pool[pick % len(pool)])
    got, peak = _limited(lambda: ErrorFeedback.from_bytes(bytes(data), size))
    assert peak < 64 * 1024
    if isinstance(got, CodecError):
        return
    assert isinstance(got, ErrorFeedback)
    assert np.all(np.isfinite(got.residual))
    assert all(math.isfinite(v) for v in values)  # a NaN or Inf is never restored


# (offset, struct format, candidate values) of the snapshot header (docs/wire-format.md 2)
SNAPSHOT_FIELDS = {
    "version": (4, "B", U8),
    "dtype": (5, "B", U8),
    "header_len": (6, "H", U16),
    "d": (16, "I", U32),
    "payload_bytes": (20, "I", U32),
}


@settings(max_examples=200)
@given(
    values=st.lists(st.sampled_from(VALUES), min_size=D, max_size=D),
    dtype=st.sampled_from(["fp16", "fp32"]),
    field=st.sampled_from([None, *SNAPSHOT_FIELDS]),
    pick=st.integers(0, 100),
)
def test_snapshot_at_the_extremes(
    values: list[float], dtype: str, field: str | None, pick: int
) -> None:
    finite = np.array([v if math.isfinite(v) else 0.0 for v in values], dtype=np.float32)
    try:
        blob = bytearray(encode_snapshot(finite, SPEC, dtype))
    except ValueError as exc:  # documented: beyond fp16's range
        assert dtype == "fp16" and "fp16 range" in str(exc)
        return
    # The payload replaced by the values as given (NaN, Inf; fp16 rounds the max to Inf).
    with np.errstate(over="ignore"):
        raw = np.array(values, dtype="<f2" if dtype == "fp16" else "<f4").tobytes()
    payload = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    blob = blob[:56] + payload
    struct.pack_into("<I", blob, 20, len(payload))
    if field is not None:
        off, fmt, pool = SNAPSHOT_FIELDS[field]
        struct.pack_into("<" + fmt, blob, off, pool[pick % len(pool)])
    got, peak = _limited(lambda: decode_snapshot(bytes(blob), SPEC))
    assert peak < 64 * 1024
    if isinstance(got, CodecError):
        return
    assert isinstance(got, np.ndarray) and np.all(np.isfinite(got))
