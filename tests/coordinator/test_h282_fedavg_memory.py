"""FedAvg's sum keeps its temporaries bounded whatever the number of clients, bit for bit.

Before, `sparse_weighted_sum` concatenated every update's int64 indices, their differences,
every float32 product and its float64 copy before one `np.bincount`: about 28 bytes per received
value during the close (helper-275: 359 MB for 64 dense updates of a 199k-parameter model,
91 MB for 16), while FedAvg's docstring and docs/robustness.md promised one float64[d]
accumulator. It now adds the same products in row order with `np.add.at`, `SUM_CHUNK` values
per call; the result must stay the `add_to` loop's, bit for bit.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, FedAvg, _base
from coordinator.aggregators._base import SUM_CHUNK, sparse_weighted_sum

D = 100_000


def _dense_rows(n: int, d: int = D, seed: int = 0) -> tuple[list[SparseUpdate], list[float]]:
    rng = np.random.default_rng(seed)
    idx = np.arange(d, dtype=np.int64)
    rows = [SparseUpdate(idx, rng.standard_normal(d).astype(np.float32), d) for _ in range(n)]
    return rows, [float(1 + i % 9) for i in range(n)]


def _peak(call: Callable[[], Any]) -> int:
    """Bytes allocated at the peak of `call()` beyond what was held before it (inputs)."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out is not None
    return peak - before


def _row(indices: Any, values: Any, size: int) -> SparseUpdate:
    """A SparseUpdate built by hand, of any dtypes (the decoders make int64 and float32)."""
    return SparseUpdate(indices, values, size)


def _loop_sum(updates: list[SparseUpdate], weights: list[Any], size: int) -> np.ndarray:
    acc = np.zeros(size, dtype=np.float64)
    for u, w in zip(updates, weights, strict=True):
        u.add_to(acc, w)
    return acc


def test_sparse_weighted_sum_peak_does_not_grow_with_clients() -> None:
    # Prepare: 8 and 64 dense updates of d = 100,000 (the old pass: ~23 MB and ~180 MB)
    few, w_few = _dense_rows(8)
    many, w_many = _dense_rows(64)
    # The accumulator (returned, so still held) and the documented 24 bytes per chunk value
    # (the int64 and float64 buffers, 16, one piece's float32 products, 4, and a margin);
    # 64 KB for numpy's and tracemalloc's own small objects.
    bound = 8 * D + 24 * SUM_CHUNK + 64 * 1024

    # Execute
    peak_few = _peak(lambda: sparse_weighted_sum(few, w_few, D))
    peak_many = _peak(lambda: sparse_weighted_sum(many, w_many, D))

    # Assert
    assert peak_many <= 1.5 * peak_few, (peak_few, peak_many)
    assert peak_many <= bound, (peak_many, bound)


def test_fedavg_close_peak_does_not_grow_with_clients() -> None:
    # Prepare
    few, w_few = _dense_rows(8)
    many, w_many = _dense_rows(64)
    proc = FedAvg().create(D)
    state = proc.initialize()
    cu_few = [ClientUpdate(f"d{i}", u, w) for i, (u, w) in enumerate(zip(few, w_few, strict=True))]
    cu_many = [
        ClientUpdate(f"d{i}", u, w) for i, (u, w) in enumerate(zip(many, w_many, strict=True))
    ]
    # The sum's bound, then the finite check's bool[d] and the float32[d] result; no float64[d]
    # quotient (the mean is divided straight into float32).
    bound = 8 * D + 24 * SUM_CHUNK + 1 * D + 4 * D + 64 * 1024

    # Execute
    peak_few = _peak(lambda: proc.next(state, cu_few))
    peak_many = _peak(lambda: proc.next(state, cu_many))

    # Assert
    assert peak_many <= 1.5 * peak_few, (peak_few, peak_many)
    assert peak_many <= bound, (peak_many, bound)


def test_many_small_rows_stay_bounded_too() -> None:
    # Prepare: 2,000 rows of 500 values (N = 10^6 values, 28 MB for the old pass)
    rng = np.random.default_rng(3)
    rows = [
        SparseUpdate(
            np.sort(rng.choice(D, 500, replace=False)).astype(np.int64),
            rng.standard_normal(500).astype(np.float32),
            D,
        )
        for _ in range(2_000)
    ]
    weights = [float(i % 5) for i in range(2_000)]

    # Execute
    peak = _peak(lambda: sparse_weighted_sum(rows, weights, D))

    # Assert
    assert peak <= 8 * D + 24 * SUM_CHUNK + 64 * 1024, peak
    np.testing.assert_array_equal(
        sparse_weighted_sum(rows, weights, D), _loop_sum(rows, weights, D)
    )


_WEIGHT = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(0, 1000),
    st.integers(0, 1000).map(float),
    st.floats(0, 1e6, allow_nan=False).map(np.float64),  # a float64 product, as add_to makes
    st.sampled_from([0.0, -0.0, 1e38, 3e38]),  # float32 products that overflow to +-inf
)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(
    n=st.integers(0, 10),
    size=st.integers(1, 80),
    chunk=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    weights=st.lists(_WEIGHT, min_size=10, max_size=10),
    index_dtype=st.sampled_from([np.int64, np.int32, np.uint16, np.uint64]),
    value_dtype=st.sampled_from([np.float32, np.float64, np.float16]),
)
def test_chunked_sum_is_the_add_to_loop_across_chunk_boundaries(
    n: int,
    size: int,
    chunk: int,
    seed: int,
    weights: list[Any],
    index_dtype: Any,
    value_dtype: Any,
) -> None:
    # Prepare: overlapping rows, some empty, some dense, with chunks small enough that they
    # split rows and span several of them
    rng = np.random.default_rng(seed)
    updates = []
    for _ in range(n):
        k = int(rng.integers(0, size + 1))
        idx = np.sort(rng.choice(size, size=k, replace=False)).astype(index_dtype)
        vals = (rng.standard_normal(k) * 10 ** rng.uniform(-6, 3)).astype(value_dtype)
        updates.append(_row(idx, vals, size))

    # Execute
    with pytest.MonkeyPatch.context() as mp, np.errstate(over="ignore"):
        mp.setattr(_base, "SUM_CHUNK", chunk)
        # As FedAvg calls it: +inf + -inf makes NaN without a warning (warnings are errors).
        # float16 values are the exception: a weight beyond float16's range (65,520) makes
        # the product inf, and inf * 0 warns in both paths (decoded uploads are float32, so
        # FedAvg never sees it; test_opposite_overflows_make_nan_without_a_warning checks
        # the float32 case warns nothing)
        with np.errstate(invalid="ignore" if value_dtype is np.float16 else "warn"):
            fast = sparse_weighted_sum(updates, weights[:n], size)
        with np.errstate(invalid="ignore"):
            loop = _loop_sum(updates, weights[:n], size)

    # Assert: bit for bit, overflowed and NaN coordinates included
    assert fast is not None
    assert fast.dtype == np.float64
    np.testing.assert_array_equal(fast.view(np.int64), loop.view(np.int64))


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    size=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    uniform=st.booleans(),
)
def test_fedavg_mean_is_the_add_to_loop_divided(
    n: int, size: int, seed: int, uniform: bool
) -> None:
    # Prepare: what FedAvg computed before, (loop sum / total weight) rounded to float32
    rng = np.random.default_rng(seed)
    updates = []
    for i in range(n):
        k = int(rng.integers(0, size + 1))
        idx = np.sort(rng.choice(size, size=k, replace=False)).astype(np.int64)
        vals = (rng.standard_normal(k) * 10 ** rng.uniform(-30, 30)).astype(np.float32)
        updates.append(ClientUpdate(f"d{i}", SparseUpdate(idx, vals, size), float(1 + i * 37)))
    weights = [1.0 if uniform else cu.weight for cu in updates]
    proc = FedAvg(uniform=uniform).create(size)

    # Execute
    out = proc.next(proc.initialize(), updates)

    # Assert
    want = (_loop_sum([cu.update for cu in updates], weights, size) / sum(weights)).astype(
        np.float32
    )
    assert out.result.dtype == np.float32
    np.testing.assert_array_equal(out.result.view(np.int32), want.view(np.int32))


def test_rows_a_sum_cannot_stand_for_are_declined() -> None:
    # Prepare: rows where add_to is not a plain sum, or whose products are long doubles (add_to
    # adds them unrounded, a float64 sum rounds them first)
    ok = SparseUpdate(np.array([0, 3], np.int64), np.ones(2, np.float32), 4)
    bad = {
        "values_shorter": SparseUpdate(np.array([0, 3], np.int64), np.ones(1, np.float32), 4),
        "more_than_size": SparseUpdate(np.arange(5, dtype=np.int64), np.ones(5, np.float32), 4),
        "negative": SparseUpdate(np.array([-1, 2], np.int64), np.ones(2, np.float32), 4),
        "decreasing": SparseUpdate(np.array([3, 0], np.int64), np.ones(2, np.float32), 4),
        "float_indices": _row(np.array([0.0, 3.0]), np.ones(2, np.float32), 4),
        "two_d": SparseUpdate(np.array([[0, 3]], np.int64), np.ones((1, 2), np.float32), 4),
    }
    if np.dtype(np.longdouble).itemsize > 8:
        bad["longdouble"] = _row(np.array([0, 3], np.int64), np.ones(2, np.longdouble), 4)

    # Execute / Assert
    for name, row in bad.items():
        assert sparse_weighted_sum([ok, row], [1.0, 1.0], 4) is None, name
    assert sparse_weighted_sum([ok, ok], [1.0, 2.0], 4) is not None
    half = _row(np.array([1, 2], np.int64), np.ones(2, np.float16), 4)
    np.testing.assert_array_equal(
        sparse_weighted_sum([ok, half], [1.0, 3.0], 4), _loop_sum([ok, half], [1.0, 3.0], 4)
    )


def test_opposite_overflows_make_nan_without_a_warning() -> None:
    # Prepare: two products that overflow float32, to +inf and -inf, at one coordinate
    big = np.float32(3e38)
    up = SparseUpdate(np.array([1], np.int64), np.array([big], np.float32), 3)
    down = SparseUpdate(np.array([1, 2], np.int64), np.array([-big, 1], np.float32), 3)

    # Execute: under FedAvg's errstate (warnings are errors in this suite)
    with np.errstate(over="ignore"):
        acc = sparse_weighted_sum([up, down], [10.0, 10.0], 3)

    # Assert
    assert acc is not None
    assert acc[0] == 0 and np.isnan(acc[1]) and acc[2] == 10
