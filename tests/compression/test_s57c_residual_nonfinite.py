"""`ErrorFeedback.to_bytes`/`to_parts` refuse a residual holding NaN or Inf (a public
attribute) instead of writing a file that `from_bytes` refuses at its step 11 (stop 57,
helper C)."""

from __future__ import annotations

import math
import tracemalloc
import zlib

import numpy as np
import pytest

from compression import ErrorFeedback, NonFiniteValues


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("at", [0, 4])
@pytest.mark.parametrize("method", ["to_bytes", "to_parts"])
def test_a_non_finite_residual_is_not_written(bad: float, at: int, method: str) -> None:
    ef = ErrorFeedback(5)
    ef.residual = np.array([0.5, -1.0, 3.4e38, -0.0, 1e-45], dtype=np.float32)
    ef.residual[at] = bad
    # Before: a file was written, and reading it back failed.
    with pytest.raises(ValueError, match=r"^residual holds NaN or Inf; from_bytes would refuse"):
        getattr(ef, method)()
    # What such a file met when it was read back (this one is made by hand).
    ef.residual[at] = 0.0
    data = bytearray(ef.to_bytes())
    data[16 + 4 * at : 20 + 4 * at] = np.float32(bad).tobytes()
    data[12:16] = zlib.crc32(bytes(data[16:])).to_bytes(4, "little")
    with pytest.raises(NonFiniteValues):
        ErrorFeedback.from_bytes(bytes(data), 5)


def test_extreme_finite_residual_round_trips() -> None:
    ef = ErrorFeedback(6)
    f32max = np.finfo(np.float32).max
    ef.residual = np.array([f32max, -f32max, 1e-45, -1e-45, -0.0, 0.0], dtype=np.float32)
    back = ErrorFeedback.from_bytes(ef.to_bytes(), 6)
    assert back.residual.tobytes() == ef.residual.tobytes()  # -0.0 included


def test_the_check_allocates_no_mask() -> None:
    # tests/sdk/test_s57_residual_copies.py wants a save far below one copy of the residual:
    # an isfinite mask would be a quarter of it.
    n = 1 << 20
    ef = ErrorFeedback(n)
    ef.residual = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    tracemalloc.start()
    try:
        ef.to_parts()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak
