"""Robust rules and pre-aggregators against brute-force references written from their papers.

Seeded random reports with planted Byzantine rows. The references are written per row and per
coordinate from the definitions (no Gram matrices, no coordinate blocks): Krum's n - f - 2
nearest neighbours, NNM's n - f nearest reports, bucketing's partition, centered clipping
with tau the median distance, the trimmed mean's floor(beta·n) per side. The pre-aggregators
are checked through an inner rule that records the rows it is handed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import (
    AggregateOutput,
    Bucketing,
    CenteredClipping,
    ClientUpdate,
    CoordinateMedian,
    FedAvg,
    Krum,
    NearestNeighborMixing,
    TrimmedMean,
)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)


def reports(x: np.ndarray, weights: np.ndarray | None = None) -> list[ClientUpdate]:
    """Sparse reports listing each row's nonzero coordinates."""
    out = []
    for i, row in enumerate(np.asarray(x, dtype=np.float32)):
        idx = np.flatnonzero(row).astype(np.int64)
        w = 1.0 if weights is None else float(weights[i])
        out.append(ClientUpdate(f"dev-{i}", SparseUpdate(idx, row[idx], row.shape[0]), w))
    return out


def planted(seed: int, honest: int, byz: int, d: int, scale: float = 1e6) -> np.ndarray:
    """`honest` rows near 1 and `byz` Byzantine rows far away (the last rows)."""
    rng = np.random.default_rng(seed)
    h = 1.0 + 0.1 * rng.normal(size=(honest, d))
    b = scale * rng.choice([-1.0, 1.0], size=(byz, d)) * (1.0 + rng.random((byz, d)))
    return np.vstack([h, b]).astype(np.float32)


def run(factory: Any, x: np.ndarray, weights: np.ndarray | None = None) -> AggregateOutput:
    proc = factory.create(x.shape[1])
    out: AggregateOutput = proc.next(proc.initialize(), reports(x, weights))
    return out


class _Recorder:
    """An inner rule without `next_rows`: it is handed the rows materialised, and keeps them."""

    def __init__(self, size: int, seen: list[tuple[np.ndarray, list[float], list[str]]]) -> None:
        self.size, self.seen = size, seen

    def initialize(self) -> Any:
        return ()

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput:
        dense = np.zeros((len(updates), self.size), dtype=np.float64)
        for i, cu in enumerate(updates):
            dense[i, cu.update.indices] = cu.update.values
        self.seen.append((dense, [cu.weight for cu in updates], [cu.device_id for cu in updates]))
        return AggregateOutput(state, np.zeros(self.size, dtype=np.float32), {})


class Recording:
    def __init__(self) -> None:
        self.seen: list[tuple[np.ndarray, list[float], list[str]]] = []

    def create(self, size: int) -> _Recorder:
        return _Recorder(size, self.seen)


# -- Krum / multi-Krum (Blanchard et al. 2017) ------------------------------------------------


def ref_krum_selection(x: np.ndarray, f: int, m: int) -> list[int]:
    """Indices of the m lowest scores; a score sums the n - f - 2 smallest squared distances
    to the other reports (at least one, at most n - 1); ties by index."""
    n = x.shape[0]
    x64 = x.astype(np.float64)
    scores = []
    for i in range(n):
        d2 = sorted(float(((x64[i] - x64[j]) ** 2).sum()) for j in range(n) if j != i)
        k = min(max(1, n - f - 2), n - 1)
        scores.append(sum(d2[:k]))
    return sorted(range(n), key=lambda i: (scores[i], i))[:m]


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 3),
    st.integers(0, 4),
    st.sampled_from([1, 2, None]),
)
def test_krum_selects_as_the_paper_and_never_a_planted_far_report(
    seed: int, f: int, extra: int, m: int | None
) -> None:
    # Prepare: n = 2f + 3 + extra meets n > 2f + 2, with f far reports
    n = 2 * f + 3 + extra
    x = planted(seed, n - f, f, 5)
    # Execute
    out = run(Krum(f=f, m=m), x)
    # Assert
    want_m = n - f if m is None else m
    chosen = ref_krum_selection(x, f, want_m)
    assert out.measurements["selected"] == [f"dev-{i}" for i in chosen]
    assert all(i < n - f for i in chosen)
    np.testing.assert_allclose(
        out.result, x[chosen].astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-6
    )
    assert out.measurements["f"] == f and out.measurements["guarantee_holds"] is True


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_krum_in_small_rounds_scores_with_at_least_one_neighbour(n: int) -> None:
    # Below n = 2f + 3 (f = 2 here) the neighbour count n - f - 2 is < 1: one is used (n >= 2).
    x = np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)
    out = run(Krum(f=2, m=1), x)
    chosen = ref_krum_selection(x, 2, 1)
    assert out.measurements["selected"] == [f"dev-{chosen[0]}"]
    np.testing.assert_allclose(out.result, x[chosen[0]], rtol=1e-6)
    assert out.measurements["guarantee_holds"] is False


# -- nearest-neighbour mixing (Allouah et al. 2023) --------------------------------------------


def ref_nnm(x: np.ndarray, f: int) -> np.ndarray:
    """Row i -> mean of its n - f nearest rows (itself included; ties by index)."""
    n = x.shape[0]
    x64 = x.astype(np.float64)
    keep = max(1, n - f)
    out = np.empty_like(x64)
    for i in range(n):
        d2 = [(float(((x64[i] - x64[j]) ** 2).sum()), j) for j in range(n)]
        near = [j for _, j in sorted(d2)[:keep]]
        out[i] = x64[near].mean(axis=0)
    return out


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(4, 9), st.integers(0, 3))
def test_nnm_hands_each_report_as_the_mean_of_its_n_minus_f_nearest(
    seed: int, n: int, f: int
) -> None:
    # Prepare: distinct random reports (no distance ties)
    x = np.random.default_rng(seed).normal(size=(n, 6)).astype(np.float32)
    rec = Recording()
    # Execute
    out = run(NearestNeighborMixing(f=f, inner=rec), x, weights=np.arange(1, n + 1))
    # Assert
    (dense, weights, labels) = rec.seen[0]
    np.testing.assert_allclose(dense, ref_nnm(x, f), rtol=1e-5, atol=1e-6)
    assert weights == list(range(1, n + 1)) and labels == [f"dev-{i}" for i in range(n)]
    assert out.measurements["f"] == f and out.measurements["neighbours"] == max(1, n - f)
    assert out.measurements["guarantee_holds"] is (2 * f < n)


def test_nnm_with_a_fraction_resolves_f_per_round_by_the_exact_floor() -> None:
    # 0.29 of 100 is 29 exactly (the float product floors to 28).
    x = np.random.default_rng(7).normal(size=(100, 3)).astype(np.float32)
    rec = Recording()
    out = run(NearestNeighborMixing(f=0.29, inner=rec), x)
    assert out.measurements["f"] == 29 and out.measurements["neighbours"] == 71
    np.testing.assert_allclose(rec.seen[0][0], ref_nnm(x, 29), rtol=1e-5, atol=1e-6)
    assert out.measurements["f_fraction"] == 0.29


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(1, 3))
def test_nnm_then_median_stays_within_the_honest_range(seed: int, f: int, extra: int) -> None:
    # f far reports of n = 2f + 1 + extra: each honest report's n - f nearest are honest.
    n = 2 * f + 1 + extra
    x = planted(seed, n - f, f, 4)
    out = run(NearestNeighborMixing(f=f, inner=CoordinateMedian()), x)
    honest = x[: n - f]
    assert np.all(out.result >= honest.min(axis=0) - 1e-5)
    assert np.all(out.result <= honest.max(axis=0) + 1e-5)


# -- bucketing (Karimireddy, He and Jaggi 2022) ------------------------------------------------


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 11), st.integers(1, 4), st.integers(0, 5))
def test_bucketing_partitions_the_reports_into_buckets_of_s_and_hands_their_means(
    seed: int, n: int, s: int, rnd_count: int
) -> None:
    # Prepare: report i is (i + 1)·e_i, so a bucket mean shows exactly which reports it holds.
    x = np.diag(np.arange(1, n + 1)).astype(np.float32)
    rec = Recording()
    proc = Bucketing(bucket_size=s, inner=rec, seed=seed % 1000).create(n)
    state = proc.initialize()
    weights = np.arange(1, n + 1) * 10.0
    # Execute: a few rounds, so the round counter moves the shuffle
    for _ in range(rnd_count + 1):
        out = proc.next(state, reports(x, weights))
        state = out.state
    # Assert
    dense, wts, labels = rec.seen[-1]
    nb = -(-n // s)
    assert dense.shape == (nb, n) and labels == [f"bucket-{b}" for b in range(nb)]
    members = [np.flatnonzero(row) for row in dense]
    assert sorted(int(i) for m in members for i in m) == list(range(n))
    assert [len(m) for m in members] == [s] * (n // s) + ([n % s] if n % s else [])
    for row, m, w in zip(dense, members, wts, strict=True):
        # The plain mean of its members (the robust rule behind weighs rows equally) ...
        np.testing.assert_allclose(row[m], (m + 1) / len(m), rtol=1e-6)
        # ... and the bucket weighs its members' summed counts.
        assert w == pytest.approx(float(weights[m].sum()))
    meas = out.measurements
    assert meas["buckets"] == nb and meas["bucket_size"] == s
    assert meas["guarantee_holds"] is (nb >= 3)


def test_bucketing_shuffles_differently_from_round_to_round_and_seed_to_seed() -> None:
    n = 12
    x = np.diag(np.arange(1, n + 1)).astype(np.float32)

    def memberships(seed: int, rounds: int) -> list[list[tuple[int, ...]]]:
        rec = Recording()
        proc = Bucketing(bucket_size=3, inner=rec, seed=seed).create(n)
        state = proc.initialize()
        for _ in range(rounds):
            state = proc.next(state, reports(x)).state
        return [[tuple(np.flatnonzero(r)) for r in seen[0]] for seen in rec.seen]

    a = memberships(0, 3)
    assert a == memberships(0, 3)  # deterministic
    assert len(set(map(tuple, a))) == 3  # each round its own shuffle
    assert memberships(1, 1)[0] != a[0]  # the seed matters


def test_bucketing_behind_a_weighted_fedavg_weighs_members_by_their_counts() -> None:
    # Behind example-weighted FedAvg a bucket mean weighs its members by count, so the
    # weighted mean of bucket means is FedAvg of the reports, for any shuffle.
    x = np.random.default_rng(3).normal(size=(9, 5)).astype(np.float32)
    w = np.array([1, 50, 3, 7, 2, 90, 4, 4, 11], dtype=np.float64)
    want = (w[:, None] * x.astype(np.float64)).sum(0) / w.sum()
    for seed in range(4):
        out = run(Bucketing(bucket_size=2, inner=FedAvg(), seed=seed), x, weights=w)
        np.testing.assert_allclose(out.result, want, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 2]))
def test_bucketed_median_stays_within_the_honest_range(seed: int, s: int) -> None:
    # One far report among 13: it spoils one bucket of s; the median of 13/s buckets holds.
    x = planted(seed, 12, 1, 4)
    out = run(Bucketing(bucket_size=s, inner=CoordinateMedian(), seed=seed % 100), x)
    honest = x[:12]
    assert np.all(out.result >= honest.min(axis=0) - 1e-5)
    assert np.all(out.result <= honest.max(axis=0) + 1e-5)


# -- centered clipping with tau the median distance --------------------------------------------


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(3, 9), st.integers(1, 3))
def test_auto_tau_centered_clipping_matches_the_recurrence(seed: int, n: int, iters: int) -> None:
    x = planted(seed, n - 1, 1, 5, scale=100.0).astype(np.float64)
    proc = CenteredClipping(tau=None, beta=0.5, iterations=iters).create(5)
    state = proc.initialize()
    c = np.zeros(5)
    for _ in range(2):
        out = proc.next(state, reports(x))
        state = out.state
        v = c.copy()
        for _ in range(iters):
            diff = x.astype(np.float32).astype(np.float64) - v
            dist = np.linalg.norm(diff, axis=1)
            tau = float(np.median(dist))
            s = np.minimum(1.0, tau / np.maximum(dist, 1e-30))
            clipped = int(np.sum((s < 1.0) & (dist > 0)))
            v = v + (s[:, None] * diff).mean(axis=0)
        np.testing.assert_allclose(out.result, v, rtol=1e-4, atol=1e-5)
        assert out.measurements["tau"] == pytest.approx(tau, rel=1e-6)
        assert out.measurements["clipped"] == clipped
        c = 0.5 * c + 0.5 * v
        np.testing.assert_allclose(state, c, rtol=1e-4, atol=1e-5)


# -- trimmed mean and median with planted Byzantine rows ---------------------------------------


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(3, 12), st.sampled_from([0.1, 0.2, 0.3, 0.45]))
def test_trimmed_mean_with_at_most_t_byzantine_rows_stays_within_the_honest_range(
    seed: int, n: int, beta: float
) -> None:
    t = min(int(np.floor(beta * n + 1e-9)), (n - 1) // 2)
    x = planted(seed, n - t, t, 6)
    out = run(TrimmedMean(beta), x)
    honest = x[: n - t].astype(np.float64)
    assert np.all(out.result >= honest.min(axis=0) - 1e-5)
    assert np.all(out.result <= honest.max(axis=0) + 1e-5)
    # and it is the mean of the sorted values [t, n - t) of each column
    s = np.sort(x.astype(np.float64), axis=0)
    np.testing.assert_allclose(out.result, s[t : n - t].mean(axis=0), rtol=1e-5, atol=1e-5)
    assert out.measurements["trimmed_each_side"] == t


@pytest.mark.parametrize(
    ("n", "beta", "t"), [(3, 0.34, 1), (4, 0.49, 1), (5, 0.4, 2), (2, 0.49, 0)]
)
def test_the_trim_is_capped_so_one_value_per_coordinate_remains(
    n: int, beta: float, t: int
) -> None:
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 1
    out = run(TrimmedMean(beta), x)
    assert out.measurements["trimmed_each_side"] == t
    np.testing.assert_allclose(out.result, np.sort(x, axis=0)[t : n - t].mean(axis=0))


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 5))
def test_median_with_a_byzantine_minority_stays_within_the_honest_range(seed: int, b: int) -> None:
    x = planted(seed, b + 1, b, 6)
    out = run(CoordinateMedian(block_elems=5), x)
    honest = x[: b + 1]
    assert np.all(out.result >= honest.min(axis=0)) and np.all(out.result <= honest.max(axis=0))
    np.testing.assert_array_equal(out.result, np.median(x, axis=0).astype(np.float32))
