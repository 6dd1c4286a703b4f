"""FedAvg and the anomaly screen behind a pre-aggregator consume the mixed rows lazily.

Before, `nnm:f=2` (NNM over FedAvg) handed FedAvg every mixed row materialised at once: each
mixed row of n - f top-k reports holds up to min(d, total nnz) values, so n = 100 reports of
1,000 values over d = 100,000 peaked at 254 MB under tracemalloc (an n×d float32 matrix is
40 MB), against docs/robustness.md's 32·d + 48·N + 8·n² + 16·block = 24.9 MB. FedAvg now sums
one mixed row at a time (`_FedAvgProcess.next_rows`), bit for bit as before, and the anomaly
screen works on the rows' Gram entries and dot products (`_AnomalyProcess.next_rows`).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from compression import SparseUpdate
from coordinator.aggregators import (
    Bucketing,
    ClientUpdate,
    FedAvg,
    NearestNeighborMixing,
    UpdateRows,
    build_aggregator,
)
from coordinator.aggregators._robust import DEFAULT_BLOCK_ELEMS
from coordinator.anomaly import AnomalyFilter


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    """One BLAS thread, as torch gets one in this suite (tests/conftest.py): under `make test`
    the other xdist worker holds the second core, and OpenBLAS' two threads then waited on
    each other (the n = 100 screens below took ~10 s there, ~1 s alone). The results and the
    traced peaks are the same (tracemalloc does not see BLAS's own buffers)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def sparse_reports(n: int, d: int, k: int, seed: int) -> list[ClientUpdate]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        idx = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)
        vals = rng.normal(size=k).astype(np.float32)
        out.append(ClientUpdate(f"d{i:03d}", SparseUpdate(idx, vals, d), float(1 + i % 7)))
    return out


@pytest.mark.parametrize(
    "spec", ["nnm:f=2", "nnm:f=2+anomaly", "nnm:f=2+anomaly:min_cos=0.99", "bucket:2+fedavg"]
)
def test_pre_aggregator_over_a_summing_inner_stays_within_the_documented_bound(
    spec: str,
) -> None:
    # Prepare: the reviewer's case (t4_mem.py): the old code peaked at 254 MB for nnm:f=2.
    n, d, k = 100, 100_000, 1_000
    updates = sparse_reports(n, d, k, seed=0)
    proc = build_aggregator(spec).create(d)
    state = proc.initialize()
    bound = 32 * d + 48 * n * k + 8 * n * n + 16 * DEFAULT_BLOCK_ELEMS  # 24.9 MB
    # Execute
    tracemalloc.start()
    try:
        out = proc.next(state, updates)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Assert
    assert peak < bound, f"{spec}: peak {peak / 1e6:.1f} MB > documented {bound / 1e6:.1f} MB"
    assert peak < n * d * 4 / 4, f"{spec}: peak {peak / 1e6:.1f} MB near an n×d matrix"
    assert np.all(np.isfinite(out.result)) and np.any(out.result != 0.0)


def mixed_rows(n: int, d: int, seed: int, *, scale: float = 1.0) -> UpdateRows:
    rng = np.random.default_rng(seed)
    ups = []
    for i in range(n):
        idx = np.sort(rng.choice(d, size=d // 5, replace=False)).astype(np.int64)
        vals = (rng.normal(size=idx.shape[0]) * scale).astype(np.float32)
        ups.append(ClientUpdate(f"d{i}", SparseUpdate(idx, vals, d), float(rng.integers(1, 9))))
    rows = UpdateRows.from_client_updates(ups, d)
    mix = rng.random((n + 2, n)) * (rng.random((n + 2, n)) < 0.5)
    mix /= np.maximum(mix.sum(axis=1, keepdims=True), 1e-12)
    return rows.mixed(mix, weights=rng.integers(1, 9, size=n + 2).astype(float) * 1e6)


@pytest.mark.parametrize(
    "factory",
    [FedAvg(), FedAvg(uniform=True), FedAvg(max_weight=3e6)],
    ids=["weighted", "uniform", "capped"],
)
@pytest.mark.parametrize("scale", [1.0, 3e37], ids=["plain", "float32-overflow"])
def test_fedavg_next_rows_is_bit_for_bit_the_materialised_mean(
    factory: FedAvg, scale: float
) -> None:
    # Prepare: weights of 1e6 and values of 3e37 overflow the float32 products (the float64
    # redo); the plain case takes the float32 products.
    rows = mixed_rows(12, 500, seed=5, scale=scale)
    proc = factory.create(500)
    # Execute
    lazy = proc.next_rows(proc.initialize(), rows)
    eager = proc.next(proc.initialize(), rows.materialize())
    # Assert
    assert np.array_equal(lazy.result, eager.result)
    assert np.all(np.isfinite(lazy.result))
    assert lazy.measurements == eager.measurements


def test_fedavg_next_rows_on_the_reports_themselves_is_next() -> None:
    ups = sparse_reports(6, 300, 20, seed=3)
    proc = FedAvg().create(300)
    lazy = proc.next_rows((), UpdateRows.from_client_updates(ups, 300))
    assert np.array_equal(lazy.result, proc.next((), ups).result)


@pytest.mark.parametrize(
    "screen",
    [
        AnomalyFilter(),
        AnomalyFilter(max_norm_ratio=1.02, min_cosine=0.3),
        AnomalyFilter(min_cosine=0.9, max_drop=0.2),  # distrusted: the geometric median
        AnomalyFilter(max_norm=13.5),
    ],
    ids=["measure", "ratio+cos", "distrusted", "max_norm"],
)
def test_anomaly_on_lazy_rows_decides_as_on_materialised_rows(screen: AnomalyFilter) -> None:
    # Prepare: NNM's rows of 14 reports, one of them sign-flipped and large.
    rng = np.random.default_rng(9)
    d = 400
    base = rng.normal(size=d)
    ups = []
    for i in range(14):
        v = (base + 2.0 * rng.normal(size=d)).astype(np.float32)
        if i == 3:
            v = -20 * v
        idx = np.flatnonzero(rng.random(d) < 0.5).astype(np.int64)
        ups.append(ClientUpdate(f"d{i:02d}", SparseUpdate(idx, v[idx], d), 1.0))
    outer = NearestNeighborMixing(3, inner=screen).create(d)
    rows = UpdateRows.from_client_updates(ups, d)
    proc = screen.create(d)
    # Execute: NNM (f = 3: the 11 nearest) over the screen, and the same mixed rows screened
    # lazily and materialised.
    nnm_out = outer.next(outer.initialize(), ups)
    d2 = rows.sq_distances()
    order = np.lexsort((np.broadcast_to(np.arange(14), (14, 14)), d2), axis=1)[:, :11]
    mix = np.zeros((14, 14))
    np.put_along_axis(mix, order, 1.0 / 11, axis=1)
    nnm_rows = rows.mixed(mix, weights=rows.weights, labels=rows.labels)
    lazy = proc.next_rows(proc.initialize(), nnm_rows)
    eager = proc.next(proc.initialize(), nnm_rows.materialize())
    # Assert: the same decisions and aggregate; norms and cosines within float32 rounding.
    lm, em = lazy.measurements, eager.measurements
    assert nnm_out.measurements["inner"]["rejected"] == lm["rejected"]
    assert lm["rejected"] == em["rejected"]
    assert lm["cosine_distrusted"] == em["cosine_distrusted"]
    assert bool(lm["rejected"]) == (screen != AnomalyFilter())
    assert lm["cosine_distrusted"] == (screen.max_drop == 0.2)
    for key in ("norms", "cosines", "median_cosines"):
        assert lm[key].keys() == em[key].keys()
        for dev, value in lm[key].items():
            assert value == pytest.approx(em[key][dev], rel=1e-6, abs=1e-7), (key, dev)
    np.testing.assert_allclose(lazy.result, eager.result, rtol=1e-6, atol=1e-7)


def test_bucketing_over_fedavg_is_unchanged() -> None:
    # Bucket means summed lazily: the same bits as the materialised bucket means.
    ups = sparse_reports(11, 2_000, 50, seed=4)
    lazy = Bucketing(3, inner=FedAvg(), seed=1).create(2_000)
    out = lazy.next(lazy.initialize(), ups)
    rows = UpdateRows.from_client_updates(ups, 2_000)
    perm = np.random.default_rng([1, 0]).permutation(11)
    mix = np.zeros((4, 11))
    for b, start in enumerate(range(0, 11, 3)):
        members = perm[start : start + 3]
        # Behind an example-weighted FedAvg a report weighs its count in its bucket (stop 50)
        mix[b, members] = rows.weights[members] / rows.weights[members].sum()
    weights = [float(rows.weights[perm[s : s + 3]].sum()) for s in range(0, 11, 3)]
    eager = FedAvg().create(2_000).next((), rows.mixed(mix, weights=weights).materialize())
    assert np.array_equal(out.result, eager.result)
