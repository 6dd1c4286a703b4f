"""Robust aggregators against dense references, robustness properties and the memory bound."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import (
    Bucketing,
    CenteredClipping,
    ClientUpdate,
    CoordinateMedian,
    FedAvg,
    GeometricMedian,
    Krum,
    NearestNeighborMixing,
    TrimmedMean,
    UpdateRows,
)
from coordinator.aggregators._robust import krum_scores, resolve_f

from .test_h148_sparse_support import peak_of, random_sparse_reports


def sparse_updates(dense: np.ndarray) -> list[ClientUpdate]:
    out = []
    for i, row in enumerate(dense.astype(np.float32)):
        idx = np.flatnonzero(row).astype(np.int64)
        out.append(ClientUpdate(f"dev-{i}", SparseUpdate(idx, row[idx], row.shape[0]), 1.0))
    return out


def random_dense(rng: np.random.Generator, n: int, d: int, density: float = 0.5) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[rng.random((n, d)) >= density] = 0.0
    return x


def run(factory, dense: np.ndarray, rounds: int = 1):  # type: ignore[no-untyped-def]
    proc = factory.create(dense.shape[1])
    state = proc.initialize()
    out = None
    for _ in range(rounds):
        out = proc.next(state, sparse_updates(dense))
        state = out.state
    return out


# -- dense references -------------------------------------------------------------------------


def ref_trimmed(x: np.ndarray, beta: float) -> np.ndarray:
    n = x.shape[0]
    t = min(int(np.floor(beta * n)), (n - 1) // 2)
    s = np.sort(x.astype(np.float64), axis=0)
    return np.asarray(s[t : n - t].mean(axis=0))


def ref_krum(x: np.ndarray, f: int, m: int) -> np.ndarray:
    n = x.shape[0]
    x64 = x.astype(np.float64)
    d2 = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    k = min(max(1, n - f - 2), n - 1)
    scores = np.array([np.sort(np.delete(d2[i], i))[:k].sum() for i in range(n)])
    return np.asarray(x64[np.argsort(scores, kind="stable")[:m]].mean(axis=0))


def ref_geomed(x: np.ndarray, iters: int = 2000) -> np.ndarray:
    z = x.astype(np.float64).mean(0)
    for _ in range(iters):
        w = 1.0 / np.maximum(np.linalg.norm(x - z, axis=1), 1e-12)
        z = (w[:, None] * x).sum(0) / w.sum()
    return np.asarray(z)


dense_inputs = st.builds(
    lambda seed, n, d, density: random_dense(np.random.default_rng(seed), n, d, density),
    st.integers(0, 2**32 - 1),
    st.integers(1, 9),
    st.integers(1, 40),
    st.sampled_from([0.1, 0.5, 1.0]),
)


@settings(max_examples=40, deadline=None)
@given(dense_inputs, st.integers(1, 64))
def test_median_matches_numpy_for_any_block_size(x: np.ndarray, block: int) -> None:
    # Prepare / Execute
    out = run(CoordinateMedian(block_elems=block), x)
    # Assert: missing coordinates are zeros, as in the dense matrix
    np.testing.assert_allclose(out.result, np.median(x, axis=0), rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(dense_inputs, st.sampled_from([0.0, 0.1, 0.25, 0.4]), st.integers(1, 64))
def test_trimmed_mean_matches_reference(x: np.ndarray, beta: float, block: int) -> None:
    out = run(TrimmedMean(beta, block_elems=block), x)
    np.testing.assert_allclose(out.result, ref_trimmed(x, beta), rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(dense_inputs, st.integers(0, 3), st.integers(1, 4))
def test_multikrum_matches_reference(x: np.ndarray, f: int, m: int) -> None:
    out = run(Krum(f=f, m=m), x)
    # Multi-Krum averages at most n - f reports (at least one): a larger m is capped.
    averaged = min(m, max(1, x.shape[0] - f))
    np.testing.assert_allclose(out.result, ref_krum(x, f, averaged), rtol=1e-5, atol=1e-5)
    assert out.measurements["m"] == averaged
    assert out.measurements["m_capped"] is (m > max(1, x.shape[0] - f))


def test_geometric_median_matches_long_weiszfeld() -> None:
    x = random_dense(np.random.default_rng(3), 11, 30, 0.6)
    out = run(GeometricMedian(nu=1e-9, max_iter=1000, tol=1e-12), x)
    np.testing.assert_allclose(out.result, ref_geomed(x), atol=1e-4)


def test_centered_clipping_matches_reference_over_rounds() -> None:
    # Prepare
    rng = np.random.default_rng(4)
    x = random_dense(rng, 8, 20, 0.7)
    tau, beta, iters = 0.8, 0.5, 2
    # Execute
    proc = CenteredClipping(tau, beta, iters).create(20)
    state = proc.initialize()
    outs = []
    for _ in range(3):
        o = proc.next(state, sparse_updates(x))
        state = o.state
        outs.append(o.result)
    # Assert: the same recurrence written densely
    c = np.zeros(20)
    for r in range(3):
        v = c.copy()
        for _ in range(iters):
            diff = x.astype(np.float64) - v
            norms = np.linalg.norm(diff, axis=1)
            s = np.minimum(1.0, tau / np.maximum(norms, 1e-30))
            v = v + (s[:, None] * diff).mean(0)
        np.testing.assert_allclose(outs[r], v, rtol=1e-5, atol=1e-6)
        c = beta * c + (1 - beta) * v


def test_update_rows_gram_dots_combine_and_blocks_match_dense() -> None:
    rng = np.random.default_rng(5)
    x = random_dense(rng, 7, 33, 0.3)
    rows = UpdateRows.from_client_updates(sparse_updates(x), 33)
    w = rng.normal(size=(4, 7))
    mixed = rows.mixed(w)
    z = rng.normal(size=33)
    y = w @ x.astype(np.float64)
    np.testing.assert_allclose(rows.gram(), x.astype(np.float64) @ x.T, atol=1e-9)
    np.testing.assert_allclose(mixed.gram(), y @ y.T, atol=1e-9)
    np.testing.assert_allclose(mixed.sq_norms(), (y**2).sum(1), atol=1e-9)
    np.testing.assert_allclose(mixed.dots(z), y @ z, atol=1e-9)
    np.testing.assert_allclose(mixed.combine([1, 2, 3, 4]), np.array([1, 2, 3, 4]) @ y, atol=1e-9)
    stitched = np.concatenate([b for _, _, b in mixed.blocks(block_elems=10)], axis=1)
    np.testing.assert_allclose(stitched, y, atol=1e-5)
    for u in mixed.materialize():
        np.testing.assert_allclose(
            u.update.to_dense(), y[int(u.device_id.split("-")[1])], atol=1e-5
        )


# -- robustness properties --------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [CoordinateMedian(), TrimmedMean(0.4), GeometricMedian(), Krum(f=3), Krum(f=3, m=None)],
    ids=["median", "trimmed", "geomed", "krum", "multikrum"],
)
def test_huge_outliers_from_a_minority_do_not_move_the_aggregate(factory) -> None:  # type: ignore[no-untyped-def]
    # Prepare: 7 benign updates near 1, 3 attackers at 1e6
    rng = np.random.default_rng(6)
    benign = 1.0 + 0.01 * rng.normal(size=(7, 50))
    x = np.concatenate([benign, np.full((3, 50), 1e6)]).astype(np.float32)
    # Execute
    out = run(factory, x)
    # Assert
    assert np.all(np.abs(out.result - 1.0) < 0.1)


def test_krum_selects_a_benign_update() -> None:
    rng = np.random.default_rng(7)
    benign = rng.normal(size=(8, 40)) * 0.1
    attack = np.full((2, 40), -5.0) + 0.001 * rng.normal(size=(2, 40))
    out = run(Krum(f=2), np.concatenate([benign, attack]).astype(np.float32))
    assert out.measurements["selected"][0] in {f"dev-{i}" for i in range(8)}


def test_centered_clipping_bounds_each_report_s_pull() -> None:
    x = np.zeros((10, 5), dtype=np.float32)
    x[0] = 1e9
    out = run(CenteredClipping(tau=1.0, beta=0.0), x)
    # One report can move v by at most tau / n.
    assert np.linalg.norm(out.result) <= 1.0 / 10 + 1e-6


def test_nnm_then_krum_matches_dense_mixing() -> None:
    rng = np.random.default_rng(8)
    x = random_dense(rng, 9, 25, 0.5).astype(np.float64)
    f = 2
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    mixed = np.stack([x[np.argsort(d2[i], kind="stable")[: 9 - f]].mean(0) for i in range(9)])
    out = run(NearestNeighborMixing(f=f, inner=Krum(f=f)), x.astype(np.float32))
    np.testing.assert_allclose(out.result, ref_krum(mixed, f, 1), atol=1e-5)


def test_bucketing_hands_bucket_means_to_inner_and_is_seeded() -> None:
    rng = np.random.default_rng(9)
    x = random_dense(rng, 6, 12, 0.8)
    # With FedAvg(uniform) inside, equal-size buckets must give the plain mean back.
    out = run(Bucketing(2, inner=FedAvg(uniform=True), seed=3), x)
    np.testing.assert_allclose(out.result, x.mean(0), atol=1e-6)
    a = run(Bucketing(2, inner=CoordinateMedian(), seed=3), x).result
    b = run(Bucketing(2, inner=CoordinateMedian(), seed=3), x).result
    np.testing.assert_array_equal(a, b)
    assert run(Bucketing(2, inner=CoordinateMedian()), x).measurements["buckets"] == 3


def test_resolve_f_counts_and_fractions() -> None:
    assert resolve_f(2, 10) == 2
    assert resolve_f(0.25, 10) == 2
    with pytest.raises(ValueError):
        resolve_f(1.5, 10)
    with pytest.raises(ValueError):
        resolve_f(-0.1, 10)


def test_empty_round_and_size_mismatch() -> None:
    proc = CoordinateMedian().create(4)
    assert np.all(proc.next(proc.initialize(), []).result == 0)
    bad = ClientUpdate("x", SparseUpdate.from_dense(np.ones(3, np.float32)), 1.0)
    with pytest.raises(ValueError, match="size"):
        proc.next(proc.initialize(), [bad])
    with pytest.raises(ValueError):
        TrimmedMean(0.5)


def test_krum_scores_single_report() -> None:
    assert krum_scores(np.zeros((1, 1)), 0).tolist() == [0.0]


# -- memory bound: no n×d allocation ----------------------------------------------------------


def test_memory_stays_far_below_n_by_d() -> None:
    """n=200, d=100,000, 1% nnz each: an n×d float32 matrix alone would be 80 MB.

    Stated bound (docs/robustness.md), inputs aside: 32·d + 48·N + 8·n² + 16·block_elems bytes
    for every aggregator here, with N the total stored values (here 200,000): 17 MB.
    """
    # Prepare
    n, d, k = 200, 100_000, 1_000
    updates = random_sparse_reports(n, d, k, seed=10)
    block = 1 << 18
    factories: dict[str, Any] = {
        "median": CoordinateMedian(block_elems=block),
        "trimmed": TrimmedMean(0.1, block_elems=block),
        "nnm+krum": NearestNeighborMixing(0.1, inner=Krum(0.1)),
        "bucket+median": Bucketing(2, inner=CoordinateMedian(block_elems=block)),
        "geomed": GeometricMedian(max_iter=3),
        "cclip": CenteredClipping(),
    }
    bound = 32 * d + 48 * n * k + 8 * n * n + 16 * block
    for name, factory in factories.items():
        # Execute
        peak, _ = peak_of(factory, d, updates)
        # Assert
        assert peak < bound, f"{name}: peak {peak} bytes > stated bound {bound}"
        assert peak < 4 * n * d / 5, name


class _FixedInner:
    """A fake inner aggregator (no next_rows): returns the plain sum and measurement 42."""

    def create(self, size: int) -> _FixedInner:
        self.size = size
        self.seen: list[list[str]] = []
        return self

    def initialize(self) -> int:
        return 0

    def next(self, state: int, updates):  # type: ignore[no-untyped-def]
        from coordinator.aggregators import AggregateOutput

        self.seen.append([cu.device_id for cu in updates])
        acc = np.zeros(self.size)
        for cu in updates:
            cu.update.add_to(acc)
        return AggregateOutput(state + 1, acc.astype(np.float32), {"fixed": 42})


@pytest.mark.parametrize("wrapper", ["bucket", "nnm"])
def test_pre_aggregators_delegate_to_an_opaque_inner(wrapper: str) -> None:
    # Prepare
    x = random_dense(np.random.default_rng(11), 6, 10, 0.7)
    inner = _FixedInner()
    factory = (
        Bucketing(3, inner=inner, seed=0)
        if wrapper == "bucket"
        else NearestNeighborMixing(f=1, inner=inner)
    )
    proc = factory.create(10)
    state = proc.initialize()
    # Execute
    out = proc.next(state, sparse_updates(x))
    # Assert: the inner ran once on materialised mixed rows; its measurement is nested
    assert out.measurements["inner"] == {"fixed": 42}
    assert len(inner.seen) == 1
    # The fake sums what it gets: bucket means, or each report's 5-nearest mean
    total = out.result.astype(np.float64)
    if wrapper == "bucket":
        np.testing.assert_allclose(total * 3, x.sum(0), rtol=1e-5, atol=1e-5)
        assert inner.seen[0] == ["bucket-0", "bucket-1"]
    else:
        assert inner.seen[0] == [f"dev-{i}" for i in range(6)]
        x64 = x.astype(np.float64)
        d2 = ((x64[:, None] - x64[None]) ** 2).sum(-1)
        rows = [x64[np.argsort(d2[i], kind="stable")[:5]].mean(0) for i in range(6)]
        np.testing.assert_allclose(total, np.sum(rows, axis=0), rtol=1e-5, atol=1e-5)
