"""A refused frame or snapshot of non-finite values costs no more memory than a valid one.

Step 24 of docs/wire-format.md 1.5 (and the snapshot's NaN check) named the first non-finite
value with `np.flatnonzero(~np.isfinite(out))[0]`: an int64 array of every bad position, 8
bytes a scalar on top of the decode when every value is bad. The first bad position is now
found without an array that grows with the count of bad values.

`pytest -s` prints each case's peaks in bytes per model scalar (docs/wire-format.md 1.5 quotes
them).
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
import zstandard

from compression import (
    CodecConfig,
    ModelSpec,
    NonFiniteValues,
    UpdateCodec,
    decode_snapshot,
    encode_snapshot,
)
from compression._snapshot import SNAPSHOT_HEADER_LEN

from ._craft import make_frame, payload_of, with_payload

# Large enough that 8 bytes a scalar (4.8 MB) dwarfs allocator noise, small enough that a case
# runs in well under a second.
D = 600_000
SPEC = ModelSpec.from_shapes([("w", (D,))])
CODEC = UpdateCodec(SPEC, CodecConfig(0.01, 4))
# Where the bad values start: the error must name this position.
FIRST_BAD = 1234
# Allowed difference between two decodes of same-size inputs (small objects, the error text).
SLACK = 64 * 1024


def _values(width: int, bad: bool) -> bytes:
    """`D` little-endian values of `width` bytes: all zero, or zero up to FIRST_BAD, then one
    +Inf, then NaN (all-ones bytes) to the end."""
    if not bad:
        return bytes(width * D)
    inf = {2: b"\x00\x7c", 4: b"\x00\x00\x80\x7f"}[width]
    return bytes(width * FIRST_BAD) + inf + b"\xff" * (width * (D - FIRST_BAD - 1))


def _frame(bits: int, bad: bool) -> bytes:
    """A dense (k = d, index id 0) update frame of fp16 or fp32 values behind zstd."""
    raw = make_frame(SPEC.fingerprint, D, D, bits, 0, 0, 0, (b"", b"", _values(bits // 8, bad)))
    return with_payload(raw, zstandard.ZstdCompressor().compress(payload_of(raw)), flags=1)


def _snapshot(width: int, bad: bool) -> bytes:
    """A snapshot of zeros; `bad` swaps its payload for the bad values (the digest stays)."""
    blob = encode_snapshot(np.zeros(D, np.float32), SPEC, {2: "fp16", 4: "fp32"}[width])
    if not bad:
        return blob
    payload = zstandard.ZstdCompressor().compress(_values(width, True))
    head = bytearray(blob[:SNAPSHOT_HEADER_LEN])
    struct.pack_into("<I", head, 20, len(payload))
    return bytes(head) + payload


def _decode_frame(data: bytes) -> object:
    return CODEC.decode_frame(data)


def _decode_snapshot(data: bytes) -> object:
    return decode_snapshot(data, SPEC)


# name: (build(bad) -> bytes, decode(bytes), the noun the error names the position with)
CASES: dict[str, tuple[Callable[[bool], bytes], Callable[[bytes], object], str]] = {
    "frame_fp32": (lambda bad: _frame(32, bad), _decode_frame, "value"),
    "frame_fp16": (lambda bad: _frame(16, bad), _decode_frame, "value"),
    "snapshot_fp32": (lambda bad: _snapshot(4, bad), _decode_snapshot, "parameter"),
    "snapshot_fp16": (lambda bad: _snapshot(2, bad), _decode_snapshot, "parameter"),
}


def _peak(decode: Callable[[bytes], object], data: bytes) -> tuple[int, str | None]:
    """Traced peak allocation of `decode(data)`, and its NonFiniteValues message if refused."""
    tracemalloc.start()
    try:
        try:
            decode(data)
            msg = None
        except NonFiniteValues as exc:
            msg = str(exc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, msg


@pytest.mark.parametrize("name", sorted(CASES))
def test_refusing_non_finite_values_peaks_no_higher_than_a_valid_decode(name: str) -> None:
    # Prepare: both inputs are built before tracing; they decode to the same sizes.
    build, decode, noun = CASES[name]
    valid, hostile = build(False), build(True)

    # Execute
    valid_peak, valid_msg = _peak(decode, valid)
    hostile_peak, hostile_msg = _peak(decode, hostile)
    print(
        f"{name}: valid {valid_peak / D:.2f}, refused {hostile_peak / D:.2f} bytes a scalar "
        f"(d = {D})"
    )

    # Assert: the valid one decodes, the hostile one is refused naming its first bad value
    # (the Inf before the NaNs), and the refusal allocated no more than the valid decode.
    assert valid_msg is None
    assert hostile_msg == f"NaN or Inf at {noun} {FIRST_BAD}"
    assert hostile_peak <= valid_peak + SLACK, (
        f"refusal peaked at {hostile_peak / D:.2f} bytes a scalar, "
        f"the valid decode at {valid_peak / D:.2f}"
    )
