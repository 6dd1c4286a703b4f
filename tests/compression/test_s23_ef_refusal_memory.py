"""An Elias-Fano index that is not strictly increasing is refused without an array of every
bad position (helper-223's leftover: `np.flatnonzero(idx[1:] <= idx[:-1])[0]` built an int64
array of all of them, 8 bytes a scalar on top of the decode when every index repeats). The
refusal must cost no more memory than the valid frame of the same size, and still name the
first repeat."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zstandard

from compression import CodecConfig, InvalidIndices, ModelSpec, UpdateCodec
from compression._index import EliasFanoCoding

from ._craft import make_frame, payload_of, with_payload

D = 600_000
SPEC = ModelSpec.from_shapes([("w", (D,))])
CODEC = UpdateCodec(SPEC, CodecConfig(0.01, 4))
SLACK = 64 * 1024
FIRST_REPEAT = 777  # indices 0..777, then 777 again and on


def _frame(idx: np.ndarray) -> bytes:
    """k = d fp32 values (bits 32) with an Elias-Fano index (id 3), payload behind zstd."""
    index = EliasFanoCoding().encode(idx, D, 0)
    values = (np.arange(D) % 251 - 125).astype("<f4").tobytes()
    raw = make_frame(SPEC.fingerprint, D, D, 32, 3, 0, 0, (index, b"", values))
    return with_payload(raw, zstandard.ZstdCompressor().compress(payload_of(raw)), flags=1)


def _peak(frame: bytes) -> tuple[int, Exception | None]:
    tracemalloc.start()
    try:
        CODEC.decode(frame)
        err: Exception | None = None
    except InvalidIndices as exc:
        err = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, err


def test_repeated_indices_are_refused_within_the_valid_frames_memory() -> None:
    # Prepare: the valid twin, and one whose indices stop rising at FIRST_REPEAT + 1
    valid = _frame(np.arange(D, dtype=np.int64))
    bad_idx = np.minimum(np.arange(D, dtype=np.int64), FIRST_REPEAT)
    bad = _frame(bad_idx)
    # Execute
    valid_peak, valid_err = _peak(valid)
    bad_peak, bad_err = _peak(bad)
    print(f"elias-fano: refused {bad_peak / D:.2f} B/scalar, valid {valid_peak / D:.2f}")
    # Assert
    assert valid_err is None
    assert isinstance(bad_err, InvalidIndices)
    assert f"at position {FIRST_REPEAT + 1}: {FIRST_REPEAT} then {FIRST_REPEAT}" in str(bad_err)
    assert bad_peak <= valid_peak + SLACK


@pytest.mark.parametrize("k", [2, 3])
def test_small_repeats_are_named(k: int) -> None:
    spec = ModelSpec.from_shapes([("w", (16,))])
    idx = np.array([5, 5, 9][:k], dtype=np.int64)
    index = EliasFanoCoding().encode(idx, 16, 0)
    raw = make_frame(spec.fingerprint, 16, k, 32, 3, 0, 0, (index, b"", bytes(4 * k)))
    with pytest.raises(InvalidIndices, match="at position 1: 5 then 5"):
        UpdateCodec(spec, CodecConfig(0.5, 32)).decode(raw)
