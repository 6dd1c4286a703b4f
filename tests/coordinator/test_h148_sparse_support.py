"""The support rule of `trimmed_mean:BETA,support=1` on sparse (top-k) reports.

With t = floor(BETA·n), a coordinate that at least 2t + 1 reports sent is the trimmed mean of
its senders' values only (t dropped at each end); any other coordinate is the plain rule's
(unsent values counted as 0). Checked against a per-column reference, and for the properties
docs/robustness.md states: the plain rule on dense reports; with at most t attackers, the
honest senders' range on supported coordinates and no coordinate set by attackers alone;
independence of block size, report order and repetition; bounded memory.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import (
    AggregatorSpecError,
    Bucketing,
    ClientUpdate,
    TrimmedMean,
    build_aggregator,
)
from coordinator.aggregators._base import AggregateOutput
from tests.coordinator.test_h95_attacks import topk_example

Mask = np.ndarray
BETAS = [0.0, 0.1, 0.2, 0.3, 0.45]


def reports(values: np.ndarray, sent: Mask) -> list[ClientUpdate]:
    """One sparse report per row, listing exactly the coordinates `sent` marks."""
    out = []
    for i, (row, mask) in enumerate(zip(values.astype(np.float32), sent, strict=True)):
        idx = np.flatnonzero(mask).astype(np.int64)
        out.append(ClientUpdate(f"dev-{i}", SparseUpdate(idx, row[idx], row.shape[0]), 1.0))
    return out


def aggregate(spec: str, values: np.ndarray, sent: Mask) -> AggregateOutput:
    proc = build_aggregator(spec).create(values.shape[1])
    return proc.next(proc.initialize(), reports(values, sent))


def reference(values: np.ndarray, sent: Mask, beta: float) -> np.ndarray:
    """Column by column, from the definition."""
    x = np.where(sent, values, 0.0).astype(np.float32)
    n, d = x.shape
    t = int(np.floor(beta * n))
    out = np.zeros(d, dtype=np.float32)
    for j in range(d):
        senders = x[sent[:, j], j]
        col = senders if senders.size >= 2 * t + 1 else x[:, j]
        out[j] = np.sort(col)[t : col.size - t].astype(np.float64).mean()
    return out


@st.composite
def sparse_round(draw: st.DrawFn, max_n: int = 12, max_d: int = 12) -> tuple[np.ndarray, Mask]:
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from([0.2, 0.5, 0.9, 1.0]))
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, d)).astype(np.float32)
    # Some exact ties and some values sent as 0 (which count as sent).
    values[rng.random((n, d)) < 0.15] = 0.0
    values[rng.random((n, d)) < 0.15] = 1.0
    return values, rng.random((n, d)) < density


@settings(max_examples=150, deadline=None, derandomize=True)
@given(sparse_round(), st.sampled_from(BETAS))
def test_matches_the_per_column_reference(case: tuple[np.ndarray, Mask], beta: float) -> None:
    # Prepare
    values, sent = case
    n = values.shape[0]
    t = int(np.floor(beta * n))
    # Execute
    out = aggregate(f"trimmed_mean:{beta},support=1", values, sent)
    # Assert
    np.testing.assert_allclose(out.result, reference(values, sent, beta), rtol=1e-6, atol=1e-7)
    assert out.measurements["trimmed_each_side"] == t
    assert out.measurements["support_threshold"] == 2 * t + 1
    supported = int(np.count_nonzero(sent.sum(axis=0) >= 2 * t + 1))
    assert out.measurements["supported_coords"] == supported


@settings(max_examples=100, deadline=None, derandomize=True)
@given(sparse_round(), st.sampled_from(BETAS))
def test_equals_the_plain_rule_on_dense_reports(case: tuple[np.ndarray, Mask], beta: float) -> None:
    # Prepare: every report sends every coordinate.
    values, _ = case
    dense = np.ones_like(values, dtype=bool)
    # Execute
    plain = aggregate(f"trimmed_mean:{beta}", values, dense).result
    out = aggregate(f"trimmed_mean:{beta},support=1", values, dense).result
    # Assert: bit for bit.
    assert out.tobytes() == plain.tobytes()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    sparse_round(),
    st.sampled_from([0.1, 0.2, 0.3, 0.45]),
    st.sampled_from([1e-3, 1.0, 1e6, 3e38]),
    st.integers(0, 2**32 - 1),
)
def test_t_attackers_stay_within_the_honest_senders(
    case: tuple[np.ndarray, Mask], beta: float, scale: float, seed: int
) -> None:
    # Prepare: the last t = floor(beta·n) reports are attackers sending anything anywhere.
    values, sent = case
    n, d = values.shape
    t = int(np.floor(beta * n))
    rng = np.random.default_rng(seed)
    bad = np.zeros(n, dtype=bool)
    bad[n - t :] = True
    values[bad] = (rng.choice([-1.0, 1.0], size=(t, d)) * scale).astype(np.float32)
    sent[bad] = rng.random((t, d)) < 0.7
    # Execute
    out = aggregate(f"trimmed_mean:{beta},support=1", values, sent).result
    # Assert
    honest = sent & ~bad[:, None]
    for j in range(d):
        hv = values[honest[:, j], j]
        if sent[:, j].sum() >= 2 * t + 1:
            # Supported: at least t + 1 honest senders, and t values dropped at each end.
            assert hv.min() <= out[j] <= hv.max(), (j, hv, out[j])
        else:
            # The plain rule: honest reports that did not send it count as 0.
            lo = min(0.0, hv.min()) if hv.size else 0.0
            hi = max(0.0, hv.max()) if hv.size else 0.0
            assert lo <= out[j] <= hi, (j, hv, out[j])
    # t attackers alone set no coordinate.
    assert np.all(out[~honest.any(axis=0)] == 0.0)


def test_attackers_alone_do_not_set_a_coordinate_nobody_else_sent() -> None:
    # Prepare: 8 honest reports share coordinates 0-2; 2 attackers (t = floor(0.2·10) = 2)
    # send 1e30 on coordinate 0 and on 3 coordinates no honest report sent.
    rng = np.random.default_rng(3)
    n, d = 10, 8
    values = np.zeros((n, d), dtype=np.float32)
    sent = np.zeros((n, d), dtype=bool)
    values[:8, :3] = rng.normal(size=(8, 3))
    sent[:8, :3] = True
    values[8:, [0, 4, 5, 6]] = 1e30
    sent[8:, [0, 4, 5, 6]] = True
    # Execute
    out = aggregate("trimmed_mean:0.2,support=1", values, sent)
    # Assert
    assert np.all(out.result[3:] == 0.0)
    assert np.all(np.abs(out.result[:3]) <= np.abs(values[:8, :3]).max())
    assert out.measurements["supported_coords"] == 3
    # Senders-only without the threshold would give an attacker's coordinate its value.
    assert values[sent[:, 4], 4].mean() == np.float32(1e30)


def test_a_value_sent_as_zero_counts_as_sent() -> None:
    # 5 reports, t = floor(0.2·5) = 1, threshold 3: coordinate 0 is sent by 3 (one as 0.0).
    values = np.array([[0.0], [2.0], [4.0], [9.0], [9.0]], dtype=np.float32)
    sent = np.array([[True], [True], [True], [False], [False]])
    out = aggregate("trimmed_mean:0.2,support=1", values, sent)
    assert out.result[0] == 2.0 and out.measurements["supported_coords"] == 1
    # Had the 0.0 counted as unsent (2 senders), the coordinate would be the plain rule's:
    # 0, 0, 0, 2, 4 trimmed by 1 at each end, 2/3.
    assert aggregate("trimmed_mean:0.2", values, sent).result[0] == np.float32(2 / 3)


def test_no_trim_averages_each_coordinate_over_its_senders() -> None:
    # t = floor(0.2·4) = 0, threshold 1: every sent coordinate is its senders' plain mean
    # (the plain rule, also without trimming, divides by all 4).
    values = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 8.0]], dtype=np.float32)
    sent = values != 0
    out = aggregate("trimmed_mean:0.2,support=1", values, sent)
    assert out.result.tolist() == [2.0, 8.0]
    assert aggregate("trimmed_mean:0.2", values, sent).result.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("trimmed_mean:0.2,support=2", "support is 0 or 1"),
        ("trimmed_mean:0.2,support=-1", "support is 0 or 1"),
        ("trimmed_mean:0.2,support=0.5", "whole number"),
        ("trimmed_mean:0.2,support=yes", "needs a number"),
        ("trimmed_mean:0.5,support=1", r"beta must be in \[0, 0.5\)"),
        ("median:support=1", "unknown parameter"),
    ],
)
def test_bad_support_is_refused_when_the_spec_is_built(spec: str, words: str) -> None:
    with pytest.raises(AggregatorSpecError, match=words):
        build_aggregator(spec)


def test_the_factory_refuses_a_support_that_is_not_a_bool() -> None:
    with pytest.raises(ValueError, match="support must be True or False"):
        TrimmedMean(0.1, support=1)  # type: ignore[arg-type]
    assert build_aggregator("trimmed_mean:0.1,support=0") == TrimmedMean(0.1)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(sparse_round(max_d=40), st.sampled_from(BETAS), st.sampled_from([1, 3, 7, 64]))
def test_block_size_order_and_repetition_do_not_change_the_result(
    case: tuple[np.ndarray, Mask], beta: float, block: int
) -> None:
    values, sent = case
    n, d = values.shape
    perm = np.random.default_rng(n * d).permutation(n)
    proc = TrimmedMean(beta, block_elems=block, support=True).create(d)
    a = proc.next((), reports(values, sent)).result
    b = proc.next((), reports(values, sent)).result
    c = proc.next((), reports(values[perm], sent[perm])).result
    whole = TrimmedMean(beta, support=True).create(d).next((), reports(values, sent)).result
    assert a.tobytes() == b.tobytes() == c.tobytes() == whole.tobytes()


def test_mixed_rows_sent_what_their_sources_sent() -> None:
    # Bucketing hands the inner rule bucket means: a bucket sent a coordinate when one of its
    # reports did. 10 reports in buckets of 2: 5 bucket means, t = floor(0.2·5) = 1, so a
    # coordinate needs 3 sending buckets.
    rng = np.random.default_rng(5)
    values = rng.normal(size=(10, 12)).astype(np.float32)
    values[rng.random((10, 12)) < 0.4] = 0.0  # sent as 0: a bucket mean of 0 may be sent
    sent = rng.random((10, 12)) < 0.4
    factory = Bucketing(2, inner=TrimmedMean(0.2, support=True), seed=4)
    proc = factory.create(12)
    out = proc.next(proc.initialize(), reports(values, sent))
    perm = np.random.default_rng([4, 0]).permutation(10)
    buckets = [perm[i : i + 2] for i in range(0, 10, 2)]
    x = np.where(sent, values, 0.0)
    means = np.stack([x[b].astype(np.float64).mean(axis=0) for b in buckets]).astype(np.float32)
    bsent = np.stack([sent[b].any(axis=0) for b in buckets])
    np.testing.assert_allclose(out.result, reference(means, bsent, 0.2), rtol=1e-6, atol=1e-7)
    supported = int(np.count_nonzero(bsent.sum(axis=0) >= 3))
    assert 0 < out.measurements["inner"]["supported_coords"] == supported < 12
    # Sent by the mask, not by the value: some sent bucket means are 0 here.
    assert np.any(bsent & (means == 0.0))


def random_sparse_reports(
    n: int, d: int, k: int, seed: int, name: str = "d{}"
) -> list[ClientUpdate]:
    """`n` reports (named `name.format(i)`, weight 1) of `k` standard normal values each, at
    sorted distinct coordinates of `d` drawn at random (seed `seed`)."""
    rng = np.random.default_rng(seed)
    updates = []
    for i in range(n):
        idx = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)
        vals = rng.normal(size=k).astype(np.float32)
        updates.append(ClientUpdate(name.format(i), SparseUpdate(idx, vals, d), 1.0))
    return updates


def peak_of(factory: Any, d: int, updates: list[ClientUpdate]) -> tuple[int, Any]:
    """The traced peak bytes of one round of `factory` over `updates` (its state made
    before the measurement starts), and the round's output."""
    proc = factory.create(d)
    state = proc.initialize()
    tracemalloc.start()
    try:
        out = proc.next(state, updates)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, out


def test_memory_stays_bounded_without_an_n_by_d_matrix() -> None:
    """The bound test_aggregators_robust checks (32·d + 48·N + 8·n² + 16·block bytes), with
    the support rule on: 100 reports of 500 values over d = 50,000 (an n×d float32 matrix
    would take 20 MB)."""
    n, d, k = 100, 50_000, 500
    updates = random_sparse_reports(n, d, k, seed=10)
    block = 1 << 18
    bound = 32 * d + 48 * n * k + 8 * n * n + 16 * block
    for factory in (
        TrimmedMean(0.01, block_elems=block, support=True),
        Bucketing(2, inner=TrimmedMean(0.02, block_elems=block, support=True)),
    ):
        peak, out = peak_of(factory, d, updates)
        assert peak < bound, f"{factory}: peak {peak} bytes > stated bound {bound}"
        assert peak < 4 * n * d / 2, factory
        meas = out.measurements.get("inner", out.measurements)
        assert meas["supported_coords"] > 0, factory


def test_the_sparse_top_k_example_of_the_docs() -> None:
    # docs/robustness.md's example (test_h95_attacks): 10 reports, each the top 1% (k = 20 of
    # d = 2,000) of one common gradient plus as much noise; 147 coordinates are sent, 12 of
    # them by at least 3 reports and 1 by at least 5.
    x = topk_example()
    mean = x.mean(axis=0)
    sent = x != 0

    def figures(spec: str) -> tuple[float, float, int]:
        r = aggregate(spec, x, sent).result.astype(np.float64)
        norm = float(np.linalg.norm(r) / np.linalg.norm(mean))
        cos = float(r @ mean / (np.linalg.norm(r) * np.linalg.norm(mean)))
        return round(norm, 2), round(cos, 2), int(np.count_nonzero(r))

    assert figures("trimmed_mean:0.2") == (0.64, 0.70, 12)
    assert figures("trimmed_mean:0.1") == (0.75, 0.84, 33)
    # t = 2, threshold 5: only the coordinate 9 reports sent is taken over its senders.
    assert figures("trimmed_mean:0.2,support=1") == (0.65, 0.70, 12)
    # t = 1, threshold 3: the 12 coordinates 3 or more reports sent, at their senders' scale.
    assert figures("trimmed_mean:0.1,support=1") == (1.74, 0.72, 33)
