"""Index codings: lossless round trips, exact planned sizes, and the auto choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression._index import (
    INDEX_BY_NAME,
    INDEX_CODINGS,
    BitmapCoding,
    EliasFanoCoding,
    RiceCoding,
)


@st.composite
def sorted_indices(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    d = draw(st.integers(1, 5000))
    k = draw(st.integers(0, min(d, 400)))
    seed = draw(st.integers(0, 2**32 - 1))
    idx = np.sort(np.random.default_rng(seed).choice(d, size=k, replace=False)).astype(np.int64)
    return idx, d


@pytest.mark.parametrize("name", ["bitmap", "rice", "ef"])
@settings(derandomize=True, max_examples=150, deadline=None)
@given(case=sorted_indices())
def test_round_trip_is_exact(name: str, case: tuple[np.ndarray, int]) -> None:
    # Prepare
    idx, d = case
    coding = INDEX_BY_NAME[name]
    size, param = coding.plan(idx, d)
    # Execute
    buf = coding.encode(idx, d, param)
    out = coding.decode(buf, idx.shape[0], d, param)
    # Assert: lossless, planned size exact, and inside the bounds the decoder enforces
    np.testing.assert_array_equal(out, idx)
    assert out.dtype == np.int64
    assert len(buf) == size
    lo, hi = coding.length_bounds(idx.shape[0], d, param)
    assert lo <= len(buf) <= hi
    assert coding.param_ok(d, param)


@pytest.mark.parametrize("name", ["rice", "ef"])
@settings(derandomize=True, max_examples=60, deadline=None)
@given(case=sorted_indices(), param=st.integers(0, 12))
def test_any_legal_parameter_round_trips(
    name: str, case: tuple[np.ndarray, int], param: int
) -> None:
    idx, d = case
    coding = INDEX_BY_NAME[name]
    if not coding.param_ok(d, param):
        return
    buf = coding.encode(idx, d, param)
    np.testing.assert_array_equal(coding.decode(buf, idx.shape[0], d, param), idx)
    lo, hi = coding.length_bounds(idx.shape[0], d, param)
    assert lo <= len(buf) <= hi


def test_extremes() -> None:
    d = 1000
    for idx in (np.array([0]), np.array([d - 1]), np.arange(d), np.array([0, d - 1])):
        idx = idx.astype(np.int64)
        for coding in (BitmapCoding(), RiceCoding(), EliasFanoCoding()):
            _, param = coding.plan(idx, d)
            buf = coding.encode(idx, d, param)
            np.testing.assert_array_equal(coding.decode(buf, idx.shape[0], d, param), idx)


def test_rice_is_near_the_entropy_of_random_positions() -> None:
    # Prepare: 1% of 1.66M coordinates at random, the MNIST-CNN default
    d, k = 1_663_370, 16_634
    idx = np.sort(np.random.default_rng(0).choice(d, k, replace=False)).astype(np.int64)
    # Execute
    rice, _ = RiceCoding().plan(idx, d)
    ef, _ = EliasFanoCoding().plan(idx, d)
    bitmap, _ = BitmapCoding().plan(idx, d)
    # Assert: log2(C(d, k)) / k is about 8.1 bits; Rice is within 1% of it, Elias-Fano within 10%
    from math import lgamma, log

    entropy_bits = (lgamma(d + 1) - lgamma(k + 1) - lgamma(d - k + 1)) / log(2)
    assert 8 * rice < 1.01 * entropy_bits
    assert 8 * ef < 1.10 * entropy_bits
    assert bitmap == -(-d // 8) > 10 * rice


def test_registry_ids_are_stable() -> None:
    # Wire ids are part of format v1; changing them breaks every deployed decoder.
    assert {k: v.name for k, v in INDEX_CODINGS.items()} == {
        0: "all",
        1: "bitmap",
        2: "rice",
        3: "ef",
    }
