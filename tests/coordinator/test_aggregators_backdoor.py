"""CollusionFilter: weighted-cosine scores, dropping colluders, state, composition, memory."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    AggregateOutput,
    ClientUpdate,
    Clip,
    CollusionFilter,
    DPMean,
    FedAvg,
    build_aggregator,
)
from coordinator.aggregators._backdoor import (
    CollusionState,
    DeviceHistory,
    collusion_scores,
)
from coordinator.aggregators._registry import AggregatorSpecError

D = 2_000
BUSY = 1_900  # coordinates honest training uses; the last 10 are dormant


def sparse(dense: np.ndarray) -> SparseUpdate:
    row = dense.astype(np.float32)
    idx = np.flatnonzero(row).astype(np.int64)
    return SparseUpdate(idx, row[idx], row.shape[0])


def cu(name: str, dense: np.ndarray) -> ClientUpdate:
    return ClientUpdate(name, sparse(dense), 10.0)


def honest(rng: np.random.Generator, k: int = 20) -> np.ndarray:
    """A top-k-like honest report: k random coordinates of the busy ones."""
    out = np.zeros(D)
    out[rng.choice(BUSY, size=k, replace=False)] = rng.normal(scale=1.0, size=k)
    return out


def backdoored(rng: np.random.Generator, k: int = 20, trigger: int = 10) -> np.ndarray:
    """An honest-looking report that also pushes the dormant coordinates D-10..D-1 hard."""
    out = honest(rng, k - trigger)
    out[D - trigger :] = 2.0
    return out


class FortyTwo:
    """A fake inner aggregator: the uniform mean, state counts calls, measurement 42."""

    def create(self, size: int) -> Any:
        outer = self

        class _P:
            def initialize(self) -> int:
                return 0

            def next(self, state: int, updates: list[ClientUpdate]) -> AggregateOutput:
                acc = np.zeros(size)
                for u in updates:
                    u.update.add_to(acc)
                mean = acc / max(len(updates), 1)
                outer.seen = [u.device_id for u in updates]
                return AggregateOutput(state + 1, mean.astype(np.float32), {"answer": 42})

        return _P()

    seen: list[str] = []


# -- scores --------------------------------------------------------------------------------------


def test_scores_match_a_dense_weighted_cosine() -> None:
    # Prepare: three histories, two reports, random positive weights
    rng = np.random.default_rng(0)
    hist_dense = {f"h{i}": honest(rng) for i in range(3)}
    histories = {
        k: DeviceHistory(sparse(v).indices, sparse(v).values, 1) for k, v in hist_dense.items()
    }
    weights = rng.uniform(0.1, 2.0, size=D)
    reports = [("h0", sparse(honest(rng))), ("new", sparse(honest(rng)))]
    # Execute
    scores = collusion_scores(reports, histories, weights)
    # Assert: the max over *other* devices of cos(w∘a, w∘h)
    for (device, upd), got in zip(reports, scores, strict=True):
        a = weights * upd.to_dense()
        want = max(
            float(a @ (weights * h) / (np.linalg.norm(a) * np.linalg.norm(weights * h)))
            for k, h in hist_dense.items()
            if k != device
        )
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_scores_do_not_depend_on_the_history_chunk_size() -> None:
    # Prepare: 12 histories, scored whole and in chunks of about 30 values (a few histories)
    rng = np.random.default_rng(11)
    histories = {}
    for i in range(12):
        u = sparse(honest(rng) + (backdoored(rng) if i % 4 == 0 else 0.0))
        histories[f"h{i}"] = DeviceHistory(u.indices, u.values, 1)
    reports = [(f"h{i}", sparse(backdoored(rng))) for i in range(0, 12, 3)]
    weights = rng.uniform(0.0, 3.0, size=D)
    # Execute
    whole = collusion_scores(reports, histories, weights)
    chunked = collusion_scores(reports, histories, weights, chunk_values=30)
    # Assert
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)


def test_scores_without_other_histories_are_minus_one() -> None:
    # Prepare
    upd = sparse(honest(np.random.default_rng(1)))
    only_own = {"a": DeviceHistory(upd.indices, upd.values, 1)}
    # Execute
    scores = collusion_scores([("a", upd)], only_own, np.ones(D))
    # Assert
    assert scores.tolist() == [-1.0]


# -- filtering -----------------------------------------------------------------------------------


def test_two_colluders_in_one_round_are_dropped_and_the_rest_averaged() -> None:
    # Prepare: 8 honest reports on busy coordinates, 2 that share the rare trigger block
    rng = np.random.default_rng(2)
    rows = [honest(rng) for _ in range(8)] + [backdoored(rng) for _ in range(2)]
    updates = [cu(f"dev-{i}", r) for i, r in enumerate(rows)]
    proc = CollusionFilter(inner=FedAvg(uniform=True), threshold=0.3).create(D)
    # Execute
    out = proc.next(proc.initialize(), updates)
    # Assert
    assert sorted(out.measurements["dropped"]) == ["dev-8", "dev-9"]
    assert all(s > 0.3 for s in out.measurements["dropped"].values())
    assert out.measurements["kept"] == 8
    assert out.measurements["max_kept_score"] < 0.3
    np.testing.assert_allclose(out.result, np.mean(rows[:8], axis=0), rtol=1e-5, atol=1e-6)


def test_a_colluder_is_caught_by_an_earlier_rounds_history_and_remembered() -> None:
    # Prepare: round 1 holds one attacker (nobody to match), round 2 another attacker
    rng = np.random.default_rng(3)
    proc = CollusionFilter(inner=FedAvg(uniform=True), threshold=0.3, memory=1).create(D)
    r1 = [cu(f"h{i}", honest(rng)) for i in range(5)] + [cu("bad-a", backdoored(rng))]
    r2 = [cu(f"h{i}", honest(rng)) for i in range(5, 10)] + [cu("bad-b", backdoored(rng))]
    r3 = [cu("h0", honest(rng)), cu("bad-b", honest(rng))]
    r4 = [cu("h1", honest(rng)), cu("bad-b", honest(rng))]
    # Execute
    o1 = proc.next(proc.initialize(), r1)
    o2 = proc.next(o1.state, r2)
    o3 = proc.next(o2.state, r3)
    o4 = proc.next(o3.state, r4)
    # Assert: the first attacker passes; the second matches its history and is dropped; its
    # device stays suspect for memory=1 more round (even with a clean-looking report), then not
    assert o1.measurements["dropped"] == {}
    assert list(o2.measurements["dropped"]) == ["bad-b"]
    assert list(o3.measurements["dropped"]) == ["bad-b"]
    assert o4.measurements["dropped"] == {}
    assert o4.measurements["tracked_devices"] == 12


def test_honest_reports_on_shared_busy_coordinates_are_not_flagged() -> None:
    # Prepare: 30 rounds of 10 honest devices out of 50, all on the same busy coordinates
    rng = np.random.default_rng(4)
    proc = CollusionFilter(inner=FedAvg(uniform=True), threshold=0.3).create(D)
    state = proc.initialize()
    flagged = 0
    # Execute
    for _ in range(30):
        devs = rng.choice(50, size=10, replace=False)
        out = proc.next(state, [cu(f"dev-{d}", honest(rng)) for d in devs])
        state = out.state
        flagged += out.measurements["flagged"]
    # Assert
    assert flagged == 0


def test_nothing_kept_gives_a_zero_step_and_keeps_the_inner_state() -> None:
    # Prepare: threshold -1 flags every report that has another history to compare with
    rng = np.random.default_rng(5)
    proc = CollusionFilter(inner=FortyTwo(), threshold=-1.0).create(D)
    state = proc.initialize()
    # Execute
    out = proc.next(state, [cu("a", honest(rng)), cu("b", honest(rng))])
    # Assert
    assert out.measurements["kept"] == 0
    assert not out.result.any()
    assert out.state.inner == 0


# -- state and memory bounds -----------------------------------------------------------------------


def test_device_frequency_matches_histories_under_caps_and_eviction() -> None:
    # Prepare: at most 4 devices with at most 15 values each
    rng = np.random.default_rng(6)
    proc = CollusionFilter(threshold=0.99, history_values=15, max_devices=4).create(D)
    state = proc.initialize()
    # Execute
    for r in range(6):
        out = proc.next(state, [cu(f"dev-{r}-{i}", honest(rng)) for i in range(2)])
        state = out.state
    # Assert
    assert isinstance(state, CollusionState)
    assert len(state.histories) == 4
    assert set(state.histories) == {"dev-4-0", "dev-4-1", "dev-5-0", "dev-5-1"}
    freq = np.zeros(D, dtype=np.int32)
    for h in state.histories.values():
        assert h.indices.shape[0] <= 15
        assert np.all(np.diff(h.indices) > 0)
        freq[h.indices] += 1
    np.testing.assert_array_equal(state.device_freq, freq)


def test_history_is_the_sum_of_a_devices_reports() -> None:
    # Prepare
    rng = np.random.default_rng(7)
    a, b = honest(rng), honest(rng)
    proc = CollusionFilter(threshold=0.99).create(D)
    # Execute
    s1 = proc.next(proc.initialize(), [cu("x", a)]).state
    s2 = proc.next(s1, [cu("x", b)]).state
    # Assert
    hist = s2.histories["x"]
    dense = np.zeros(D, dtype=np.float32)
    dense[hist.indices] = hist.values
    np.testing.assert_allclose(dense, (a + b).astype(np.float32), rtol=1e-6)
    assert hist.last_round == 2


def test_memory_stays_far_below_n_by_d() -> None:
    # Prepare: n = 200 reports of 1,000 values, d = 100,000, two rounds of history
    n, d, k = 200, 100_000, 1_000
    rng = np.random.default_rng(8)

    def round_updates() -> list[ClientUpdate]:
        out = []
        for i in range(n):
            idx = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)
            vals = rng.normal(size=k).astype(np.float32)
            out.append(ClientUpdate(f"dev-{i}", SparseUpdate(idx, vals, d), 1.0))
        return out

    proc = CollusionFilter(inner=FedAvg(uniform=True)).create(d)
    state = proc.next(proc.initialize(), round_updates()).state
    updates = round_updates()
    # Execute
    tracemalloc.start()
    proc.next(state, updates)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Assert: the documented 32·d + 64·V + 48·N bytes (V history values, N report values),
    # and far below the n×d float32 matrix (80 MB)
    values = n * k
    history = 2 * n * k
    assert peak < 32 * d + 64 * history + 48 * values
    assert peak < n * d * 4 / 5


# -- composition (STYLE §1) ----------------------------------------------------------------------


def test_inner_measurements_nest_and_inner_state_advances() -> None:
    # Prepare
    rng = np.random.default_rng(9)
    inner = FortyTwo()
    proc = CollusionFilter(inner=inner).create(D)
    # Execute
    o1 = proc.next(proc.initialize(), [cu("a", honest(rng)), cu("b", honest(rng))])
    o2 = proc.next(o1.state, [cu("c", honest(rng))])
    # Assert
    assert o2.measurements["inner"] == {"answer": 42}
    assert o2.state.inner == 2
    assert inner.seen == ["c"]


def test_clipped_rows_from_an_outer_clip_are_screened_and_forwarded() -> None:
    # Prepare: Clip outside the filter hands it scaled (mixed) rows
    rng = np.random.default_rng(10)
    rows = [honest(rng) for _ in range(6)] + [backdoored(rng) for _ in range(2)]
    agg = Clip(1.0, inner=CollusionFilter(inner=FedAvg(uniform=True)))
    proc = agg.create(D)
    # Execute
    out = proc.next(proc.initialize(), [cu(f"dev-{i}", r) for i, r in enumerate(rows)])
    # Assert: colluders dropped, the rest clipped to norm 1 and averaged
    assert sorted(out.measurements["inner"]["dropped"]) == ["dev-6", "dev-7"]
    want = np.mean([r / max(1.0, np.linalg.norm(r)) for r in rows[:6]], axis=0)
    np.testing.assert_allclose(out.result, want, rtol=1e-5, atol=1e-6)


def test_registry_builds_screens_around_norm_bounding_and_dp() -> None:
    # Prepare / Execute
    a = build_aggregator("collusion:tau=0.25,memory=5,hist=100,devices=50+normbound:q=0.5+fedavg")
    b = build_aggregator("collusion+dp:clip=0.5,quantile=0.5,z=0.05,seed=0+fedavg")
    # Assert
    assert isinstance(a, CollusionFilter)
    assert (a.threshold, a.memory, a.history_values, a.max_devices) == (0.25, 5, 100, 50)
    assert isinstance(a.inner, Clip)
    assert isinstance(b, CollusionFilter) and isinstance(b.inner, DPMean)
    out = b.create(D).next(b.create(D).initialize(), [cu("a", honest(np.random.default_rng(0)))])
    assert "epsilon" in out.measurements["inner"] or "noise_stddev" in out.measurements["inner"]


@pytest.mark.parametrize(
    "spec",
    [
        "collusion:tau=1.5",
        "collusion:memory=-1",
        "collusion:typo=1",
        "normbound:1+dp:clip=1,z=1+fedavg",
        "collusion+normbound:1+dp:clip=1,z=1+fedavg",
        "collusion+dp:clip=1,z=1+median",
    ],
)
def test_bad_specs_fail_loudly(spec: str) -> None:
    with pytest.raises((AggregatorSpecError, ValueError)):
        build_aggregator(spec)


@pytest.mark.parametrize(
    "dp",
    [
        "dp:clip=1,z=1,q=0.01,denom=10",
        "dp:clip=1,z=1,population=100,sample=10",
        "dp:clip=1,z=1,population=100,sample=10,eps=8",
    ],
)
def test_screen_in_front_of_an_accounting_dp_is_refused(dp: str) -> None:
    # A screen outside dp lets one report drop another, so no epsilon may be claimed there.
    with pytest.raises(AggregatorSpecError, match="voids the DP guarantee"):
        build_aggregator(f"collusion+{dp}+fedavg")
    build_aggregator(f"{dp}+fedavg")  # the same dp alone is fine


def test_bad_state_is_refused() -> None:
    proc = CollusionFilter().create(D)
    with pytest.raises(TypeError):
        proc.next((), [cu("a", honest(np.random.default_rng(0)))])
