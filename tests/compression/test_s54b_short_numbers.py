"""compression's own refusals write a huge whole number short (1e+308, -1e+400), as the
coordinator's do (`coordinator.aggregators._base.shown`, whose digits-shortening lives here
now): `CodecConfig(block=int(1e308))` printed all 309 digits, and only the coordinator service
rewrote them (`short_digits`), so the SDK, the simulator and a Python caller still got them. A
weight keeps an int64's digits exact (6 digits of 2^53 + 1 would read as the bound itself)."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compression import CodecConfig, DecodeLimits
from compression._config import check_weight, short_digits, short_whole

LONG = re.compile(r"[0-9]{16,}")
B308 = int(1e308)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: CodecConfig(topk=0.1, bits=4, block=B308), "block must be an int in [8, 1048576], got 1e+308"),
        (lambda: CodecConfig(topk=0.1, bits=B308), "bits must be one of (1, 2, 4, 8, 16, 32), got 1e+308"),
        (lambda: CodecConfig(topk=0.1, bits=np.int64(2**62)), "bits must be one of (1, 2, 4, 8, 16, 32), got 4.61169e+18"),
        (lambda: CodecConfig(topk=0.1, bits=4, zstd_level=-(10**400)), "zstd_level must be in [-7, 22], got -1e+400"),
        (lambda: CodecConfig(topk=10**400, bits=4), "topk must be in (0, 1], got 1e+400"),
        (lambda: DecodeLimits(max_header_bytes=10**20), "max_header_bytes must be in [64, 65535], got 1e+20"),
        (lambda: DecodeLimits(max_frame_bytes=-(10**30)), "max_frame_bytes must be >= 64, got -1e+30"),
        (lambda: DecodeLimits(zstd_max_window_log=10**4000), "zstd_max_window_log must be in [10, 31], got 1e+4000"),
        (lambda: check_weight(2**1100), "weight must be a finite number in [0, 2^53], got 1.3583e+331"),
        (lambda: check_weight(-(10**40)), "weight must be a finite number in [0, 2^53], got -1e+40"),
    ],
)  # fmt: skip
def test_a_huge_whole_number_is_written_short_at_the_source(
    call: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value) == message
    assert not LONG.search(str(caught.value))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: CodecConfig(topk=0.1, bits=3), "bits must be one of (1, 2, 4, 8, 16, 32), got 3"),
        (lambda: CodecConfig(topk=0.1, bits=4, block=4), "block must be an int in [8, 1048576], got 4"),
        (lambda: CodecConfig(topk=0.1, bits=4, block="8"), "block must be an int in [8, 1048576], got '8'"),
        (lambda: CodecConfig(topk=0.1, bits=4, zstd_level=23), "zstd_level must be in [-7, 22], got 23"),
        (lambda: CodecConfig(topk=2, bits=4), "topk must be in (0, 1], got 2"),
        (lambda: DecodeLimits(max_header_bytes=10), "max_header_bytes must be in [64, 65535], got 10"),
        (lambda: check_weight(2**53 + 1), "weight must be a finite number in [0, 2^53], got 9007199254740993"),
        (lambda: check_weight(np.uint64(2**64 - 1)), "weight must be a finite number in [0, 2^53], got np.uint64(18446744073709551615)"),
    ],
)  # fmt: skip
def test_small_numbers_and_other_values_are_written_as_before(
    call: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value) == message


def test_a_fraction_weight_past_a_floats_range_is_still_cut() -> None:
    with pytest.raises(ValueError) as caught:
        check_weight(Fraction(2**1100, 3))
    assert str(caught.value).endswith("...")
    assert len(str(caught.value)) < 150


@given(
    st.integers(min_value=-(10**4000), max_value=10**4000).filter(lambda n: abs(n) >= 10**15)
    | st.integers(min_value=15, max_value=4000).map(lambda e: -(10**e) - 1)
)
def test_short_whole_is_the_int_to_6_significant_digits(n: int) -> None:
    # Execute
    text = short_whole(n)
    # Assert: short, and within half a unit of the 6th significant digit of n (exact decimals)
    assert not LONG.search(text) and len(text) <= 16, text
    exact = Decimal(n)
    unit = Decimal(1).scaleb(exact.adjusted() - 5)
    assert abs(Decimal(text) - exact) <= unit / 2 + unit / 10**9, (text, exact)
    assert short_digits(f"got {n}, id x{abs(n)}") == f"got {text}, id x{abs(n)}"
