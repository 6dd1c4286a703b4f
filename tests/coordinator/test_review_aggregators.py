"""Adversarial review of the robust aggregators: edges, huge values, weights, specs, state."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import (
    AdaptiveClip,
    AggregatorSpecError,
    Bucketing,
    CenteredClipping,
    ClientUpdate,
    Clip,
    CollusionFilter,
    CoordinateMedian,
    FedAvg,
    GeometricMedian,
    Krum,
    TrimmedMean,
    build_aggregator,
    decode_state,
    encode_state,
)
from coordinator.aggregators._backdoor import CollusionState, _add_sparse
from coordinator.aggregators._robust import DEFAULT_BLOCK_ELEMS
from coordinator.anomaly import AnomalyFilter

F32_MAX = float(np.finfo(np.float32).max)

# Every rule that claims to ignore example counts, alone and composed.
ROBUST_SPECS = [
    "median",
    "trimmed_mean:0.2",
    "krum:f=2",
    "multikrum:f=0.2",
    "geomed",
    "cclip:tau=auto,beta=0",
    "rlr:theta=2",
    "cosfilter+geomed",
    "nnm:f=2+krum:f=2",
    "bucket:2+median",
    "normbound:1+median",
    "nnm:f=0.4+cclip:tau=auto,beta=0",
]


def cu(name: str, dense: npt.ArrayLike, weight: float = 1.0) -> ClientUpdate:
    row = np.asarray(dense, dtype=np.float32)
    idx = np.arange(row.shape[0], dtype=np.int64)
    return ClientUpdate(name, SparseUpdate(idx, row, row.shape[0]), weight)


def rounds(spec: str, batches: list[list[ClientUpdate]]) -> list[Any]:
    """Outputs of consecutive rounds of `spec`'s process over `batches`."""
    proc = build_aggregator(spec).create(batches[0][0].update.size)
    state = proc.initialize()
    outs = []
    for ups in batches:
        out = proc.next(state, ups)
        state = out.state
        outs.append(out)
    return outs


def honest_cohort(rng: np.random.Generator, n: int, d: int) -> list[ClientUpdate]:
    direction = rng.normal(size=d)
    return [cu(f"h{i:02d}", direction + 0.3 * rng.normal(size=d), 50.0) for i in range(n)]


# -- huge but finite values (decoders refuse NaN/inf; float32's largest value gets through) ----


def test_median_of_a_huge_majority_stays_finite_and_other_columns_keep_their_bits() -> None:
    # Prepare: column 0 has three of four values above F32_MAX / 2; np.median's float32 mean
    # of the two middle values overflowed to inf there. Column 1 is ordinary.
    x = np.array([[1.0, 0.1], [3e38, 0.2], [3e38, 0.7], [3.2e38, 0.4]], dtype=np.float32)
    ups = [cu(f"d{i}", row) for i, row in enumerate(x)]

    # Execute
    out = CoordinateMedian().create(2).next((), ups).result

    # Assert: float64 middle-value mean in column 0, np.median's own float32 bits in column 1.
    assert out[0] == np.float32(3e38)
    assert out[1].tobytes() == np.median(x[:, 1]).tobytes()


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 8),
    st.integers(1, 12),
    st.integers(1, 16),
)
def test_median_equals_float32_median_or_its_float64_fallback(
    seed: int, n: int, d: int, block: int
) -> None:
    # Prepare: values drawn from a mix of ordinary and near-F32_MAX magnitudes.
    rng = np.random.default_rng(seed)
    scale = rng.choice([1.0, 1e30, 0.6 * F32_MAX, F32_MAX], size=(n, d))
    x = (rng.uniform(-1, 1, size=(n, d)) * scale).astype(np.float32)

    # Execute
    out = (
        CoordinateMedian(block_elems=block)
        .create(d)
        .next((), [cu(str(i), r) for i, r in enumerate(x)])
    )

    # Assert: finite everywhere; where float32 does not overflow, exactly np.median.
    with np.errstate(over="ignore"):
        ref32 = np.median(x, axis=0)
    ref64 = np.median(x.astype(np.float64), axis=0).astype(np.float32)
    expected = np.where(np.isfinite(ref32), ref32, ref64)
    assert np.all(np.isfinite(out.result))
    assert out.result.tobytes() == expected.tobytes()


def test_fedavg_does_not_overflow_a_weighted_product_into_inf() -> None:
    # Prepare: 1e37 from a device declaring 100 examples: 1e39 overflows float32's product.
    ups = [cu("a", [1.0, 2.0], 100.0), cu("b", [1e37, -3.0], 100.0)]

    # Execute
    plain = FedAvg().create(2).next((), ups).result
    capped = FedAvg(max_weight=600).create(2).next((), ups).result

    # Assert: the float64 mean, finite.
    for out in (plain, capped):
        assert np.all(np.isfinite(out))
        assert out.tobytes() == np.array([5e36, -0.5], dtype=np.float32).tobytes()


def test_fedavg_keeps_its_float32_products_when_nothing_overflows() -> None:
    # Prepare: weights whose float32 products round (the committed results depend on them).
    rng = np.random.default_rng(3)
    ups = [cu(f"d{i}", rng.normal(size=50), float(w)) for i, w in enumerate([7, 13, 101, 3])]

    # Execute
    out = FedAvg().create(50).next((), ups).result

    # Assert: the documented accumulation, acc += float32(w · values), bit for bit.
    acc = np.zeros(50)
    for u in ups:
        acc += u.weight * u.update.values
    assert out.tobytes() == (acc / 124.0).astype(np.float32).tobytes()


@pytest.mark.parametrize(
    "spec",
    [
        *ROBUST_SPECS,
        "fedavg:uniform=1",
        "fedavg:max_weight=100",
        "anomaly:norm_ratio=3,min_cos=0+median",
        "collusion+normbound:q=0.9,init=1+fedavg",
        "normbound:q=0.5+bucket:3+geomed",
    ],
)
@pytest.mark.parametrize("big", [1e30, F32_MAX])
def test_huge_finite_reports_give_a_finite_aggregate_without_warnings(
    spec: str, big: float
) -> None:
    # Prepare: 7 honest reports and 3 at +-big in every coordinate, over two rounds (the
    # stateful screens then hold huge values in their histories and momenta).
    rng = np.random.default_rng(0)
    d = 40
    batches = []
    for _ in range(3):
        ups = honest_cohort(rng, 7, d)
        ups += [cu(f"z{j}", np.full(d, big * (-1) ** j), 50.0) for j in range(3)]
        batches.append(ups)

    # Execute (filterwarnings=error turns any numpy overflow warning into a failure)
    outs = rounds(spec, batches)

    # Assert
    for out in outs:
        assert np.all(np.isfinite(out.result))


@pytest.mark.parametrize("attackers", [1, 2, 4])
@pytest.mark.parametrize("big", [1e20, 1e30, F32_MAX])
def test_geometric_median_keeps_its_breakdown_point_against_huge_minorities(
    attackers: int, big: float
) -> None:
    # Prepare: a minority at one huge point. From the mean, Weiszfeld closes only a fraction
    # attackers/honest of the gap per iteration: 4 of 10 at 1e20 used to end 1e3 away.
    rng = np.random.default_rng(attackers)
    d, honest = 30, 10 - attackers if attackers < 4 else 6
    centre = rng.normal(size=d)
    good = centre + 0.1 * rng.normal(size=(honest, d))
    ups = [cu(f"h{i}", r) for i, r in enumerate(good)]
    ups += [cu(f"z{j}", np.full(d, big)) for j in range(attackers)]

    # Execute
    out = GeometricMedian().create(d).next((), ups)

    # Assert: within the honest reports' radius r of their centre times Minsker's
    # C = (1 - a) / sqrt(1 - 2a) for an outlier fraction a (< 1.4 here), plus slack.
    r = float(np.linalg.norm(good - centre, axis=1).max())
    a = attackers / len(ups)
    bound = (1 - a) / math.sqrt(1 - 2 * a) * r
    assert float(np.linalg.norm(out.result - centre)) <= 1.05 * bound
    assert np.all(np.isfinite(out.result))


def test_geometric_median_restarts_only_when_weiszfeld_does_not_converge() -> None:
    # Prepare: a benign cohort (converges from the mean) and one with 4 of 10 at 1e20.
    rng = np.random.default_rng(1)
    d = 30
    benign = honest_cohort(rng, 10, d)
    attacked = benign[:6] + [cu(f"z{j}", np.full(d, 1e20)) for j in range(4)]

    # Execute
    proc = GeometricMedian().create(d)
    calm, hit = proc.next((), benign), proc.next((), attacked)

    # Assert: the benign round's measurements are as before (no new key), the other says so.
    assert list(calm.measurements) == ["clients", "iterations", "objective"]
    assert calm.measurements["iterations"] < 100
    assert hit.measurements["iterations"] == 100
    assert hit.measurements["restarted_from_median"] is True
    assert 0 < hit.measurements["restart_iterations"] < 100


def test_geometric_median_restart_stays_within_the_stated_memory_bound() -> None:
    """n = 200, d = 100,000, 1,000 values each; tol = 0 forces the restart from the median.

    docs/robustness.md: 32·d + 48·N for the geometric median, plus one coordinate block of the
    median (16 · block_elems bytes) when it restarts: 30 MB, against 80 MB for n×d float32.
    """
    # Prepare
    n, d, k = 200, 100_000, 1_000
    rng = np.random.default_rng(10)
    ups = []
    for i in range(n):
        idx = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)
        vals = rng.normal(size=k).astype(np.float32)
        ups.append(ClientUpdate(f"d{i}", SparseUpdate(idx, vals, d), 1.0))
    proc = GeometricMedian(max_iter=3, tol=0.0).create(d)

    # Execute
    tracemalloc.start()
    out = proc.next((), ups)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Assert
    assert "restarted_from_median" in out.measurements
    assert peak < 32 * d + 48 * n * k + 16 * DEFAULT_BLOCK_ELEMS


def test_collusion_history_saturates_instead_of_overflowing_to_inf() -> None:
    # Prepare: a device that sends 3e38 on one coordinate twice.
    upd = SparseUpdate(np.array([3, 7], dtype=np.int64), np.array([3e38, 1.0], np.float32), 10)

    # Execute
    hist = _add_sparse(_add_sparse(None, upd, 100, 1), upd, 100, 2)

    # Assert
    assert np.all(np.isfinite(hist.values))
    assert hist.values[0] == np.float32(F32_MAX) and hist.values[1] == 2.0


def test_a_huge_history_does_not_hide_colluders_in_its_chunk() -> None:
    # Prepare: d = 200; honest devices send random busy coordinates; "loud" floods coordinate
    # 0 with 3e38 twice (its history would have been inf); two colluders share dormant
    # coordinates 190..199, one per round.
    rng = np.random.default_rng(0)
    d = 200

    def honest(i: int) -> ClientUpdate:
        v = np.zeros(d)
        v[rng.choice(180, 8, replace=False)] = rng.normal(size=8)
        return cu(f"h{i}", v)

    def colluder(name: str) -> ClientUpdate:
        v = np.zeros(d)
        v[rng.choice(180, 4, replace=False)] = rng.normal(size=4)
        v[190:] = 1.0
        return cu(name, v)

    loud = np.zeros(d)
    loud[0] = 3e38
    batches = [
        [honest(0), honest(1), cu("loud", loud), colluder("c1")],
        [honest(2), honest(3), cu("loud", loud), honest(4)],
        [honest(5), honest(6), colluder("c2"), honest(7)],
    ]

    # Execute
    outs = rounds("collusion:tau=0.3+fedavg", batches)

    # Assert: c2's score against c1's history is seen (an inf history made it NaN, and the
    # NaN silently dropped the whole chunk from the comparison).
    assert "c2" in outs[2].measurements["dropped"]
    assert np.all(np.isfinite(outs[2].result))


# -- edges: n = 1, n = 2, equal reports, zeros, Krum with f >= n/2 -----------------------------


@pytest.mark.parametrize(
    "spec", ["median", "trimmed_mean:0.4", "krum:f=1", "multikrum:f=1", "geomed", "rlr:theta=1"]
)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_equal_reports_aggregate_to_that_report(spec: str, n: int) -> None:
    # Prepare
    row = np.random.default_rng(n).normal(size=17).astype(np.float32)

    # Execute
    out = rounds(spec, [[cu(f"d{i}", row) for i in range(n)]])[0]

    # Assert
    np.testing.assert_allclose(out.result, row, rtol=1e-6)


@pytest.mark.parametrize(
    "spec",
    ["median", "trimmed_mean:0.2", "krum:f=1", "multikrum", "geomed", "rlr", "fedavg", "nnm+krum"],
)
def test_reports_at_float32s_largest_value_aggregate_to_it(spec: str) -> None:
    # Accumulating five of them in float32 would overflow; every mean here sums in float64.
    row = np.full(6, F32_MAX, dtype=np.float32)
    row[::2] *= -1
    out = rounds(spec, [[cu(f"d{i}", row, 1e6) for i in range(5)]])[0]
    assert out.result.tobytes() == row.tobytes()


@pytest.mark.parametrize("spec", [*ROBUST_SPECS, "collusion+fedavg"])
def test_all_zero_reports_give_zero(spec: str) -> None:
    out = rounds(spec, [[cu(f"d{i}", np.zeros(9)) for i in range(4)]] * 2)
    for o in out:
        assert np.array_equal(o.result, np.zeros(9))  # rlr's low_lr gives -0.0: still zero


def test_trimmed_mean_never_trims_every_report() -> None:
    # floor(0.49 · 2) = 0 and floor(0.49 · 3) = 1 of 3: at least one value per coordinate remains.
    for n in (1, 2, 3, 4):
        ups = [cu(f"d{i}", [float(i)]) for i in range(n)]
        out = TrimmedMean(0.49).create(1).next((), ups)
        assert out.measurements["trimmed_each_side"] <= (n - 1) // 2
        assert out.result[0] == np.float32(np.median(np.arange(n)))


def test_krum_beyond_its_guarantee_is_defined_deterministic_and_says_so() -> None:
    # Prepare: f = 3 of n = 4 (Blanchard et al. need n > 2f + 2); two equal-score pairs.
    ups = [cu("a", [0.0]), cu("b", [1.0]), cu("c", [10.0]), cu("d", [11.0])]

    # Execute
    out = Krum(f=3).create(1).next((), ups)

    # Assert: one neighbour per score, ties to the lowest index, flagged.
    assert out.measurements["guarantee_holds"] is False
    assert out.measurements["selected"] == ["a"]
    assert out.result[0] == 0.0


def test_krum_of_two_reports_picks_the_first() -> None:
    out = Krum(f=1).create(1).next((), [cu("a", [5.0]), cu("b", [-5.0])])
    assert out.measurements["selected"] == ["a"]


@pytest.mark.parametrize("spec", ["median", "trimmed_mean:0.2", "geomed", "multikrum:f=2"])
def test_order_of_reports_does_not_matter(spec: str) -> None:
    # Prepare
    rng = np.random.default_rng(7)
    ups = honest_cohort(rng, 9, 12)
    perm = [ups[i] for i in rng.permutation(9)]

    # Execute
    a, b = rounds(spec, [ups])[0].result, rounds(spec, [perm])[0].result

    # Assert (float summation order may differ in the last bit)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- weights: a self-reported example count buys nothing under a robust rule --------------------


@pytest.mark.parametrize("spec", ROBUST_SPECS)
def test_a_huge_claimed_example_count_does_not_change_a_robust_aggregate(spec: str) -> None:
    # Prepare: the same reports, once with honest counts and once with one device claiming
    # 2^53 examples (the frame's largest weight).
    rng = np.random.default_rng(11)
    ups = honest_cohort(rng, 9, 15) + [cu("z", np.full(15, 50.0), 50.0)]
    loud = ups[:-1] + [cu("z", np.full(15, 50.0), float(2**53))]

    # Execute
    a = rounds(spec, [ups, ups])
    b = rounds(spec, [loud, loud])

    # Assert: bit for bit, both rounds.
    for oa, ob in zip(a, b, strict=True):
        assert oa.result.tobytes() == ob.result.tobytes()


def test_plain_fedavg_and_clip_around_it_do_follow_claimed_counts() -> None:
    # Documented: only FedAvg (alone or inside Clip) weighs by the claimed counts.
    ups = [cu("a", [0.0], 1.0), cu("z", [1.0], float(2**53))]
    assert FedAvg().create(1).next((), ups).result[0] == np.float32(1.0)
    assert FedAvg(uniform=True).create(1).next((), ups).result[0] == np.float32(0.5)
    out = Clip(0.5).create(1)
    assert out.next(out.initialize(), ups).result[0] == np.float32(0.5)


# -- construction: bad parameters fail typed when the spec is parsed, not mid-round -------------


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("krum:f=1,m=inf", "whole"),
        ("geomed:max_iter=inf", "whole"),
        ("geomed:nu=inf", "geomed: .*nu"),
        ("geomed:nu=0", "nu"),
        ("geomed:tol=-1", "tol"),
        ("geomed:tol=inf", "tol"),
        ("cclip:tau=inf", "cclip: .*tau"),
        ("cclip:tau=0", "tau"),
        ("cclip:beta=1", "cclip"),
        ("trimmed_mean:-0.1", "trimmed_mean: .*beta"),
        ("trimmed_mean:0.5", "beta"),
        ("krum:f=-1", "krum: .*f"),
        ("krum:f=1.5", "whole number"),
        ("multikrum:f=1,m=0", "m must be"),
        ("nnm:f=-0.1+krum", "nnm"),
        ("normbound:0", "normbound: .*clip norm"),
        ("normbound:inf", "clip norm"),
        ("normbound:q=0.5,lr=inf", "learning_rate"),
        ("normbound:q=1", "quantile"),
        ("normbound:1,seed=-1", "seed"),
        ("bucket:2,seed=-1+median", "bucket: .*seed"),
        ("bucket:0+median", "bucket size"),
        ("cosfilter:max_drop=2+geomed", "cosfilter: .*max_drop"),
        ("cosfilter:min_cos=1+geomed", "min_cosine"),
        ("rlr:theta=0", "theta"),
        ("collusion:tau=1+fedavg", "collusion"),
        ("anomaly:norm_ratio=0.5+fedavg", "anomaly: .*max_norm_ratio"),
        ("fedavg:uniform=2", "0 or 1"),
        ("fedavg:max_weight=-1", "max_weight"),
        ("median+", "empty stage"),
        ("+median", "empty stage"),
        ("cosfilter++geomed", "empty stage"),
    ],
)
def test_bad_parameters_fail_typed_when_parsed(spec: str, match: str) -> None:
    with pytest.raises(AggregatorSpecError, match=match):
        build_aggregator(spec)


def test_factories_refuse_non_finite_or_out_of_range_values_in_code_too() -> None:
    for bad in (
        lambda: GeometricMedian(nu=math.inf),
        lambda: GeometricMedian(nu=math.nan),
        lambda: GeometricMedian(tol=math.nan),
        lambda: GeometricMedian(max_iter=0),
        lambda: CenteredClipping(tau=math.inf),
        lambda: CoordinateMedian(block_elems=0),
        lambda: TrimmedMean(0.1, block_elems=-1),
        lambda: Bucketing(2, seed=-1),
        lambda: Clip(np.float32(0.0)),  # type: ignore[arg-type]  # numpy scalars arrive too
        lambda: Clip(1.0, seed=-3),
        lambda: AdaptiveClip(learning_rate=math.inf),
        lambda: AdaptiveClip(count_stddev=math.nan),
        lambda: AdaptiveClip(count_stddev=math.inf),
        lambda: AnomalyFilter(max_norm=math.nan),
        lambda: Krum(m=2.5),  # type: ignore[arg-type]
        lambda: Krum(m=math.inf),  # type: ignore[arg-type]
        lambda: CenteredClipping(iterations=1.5),  # type: ignore[arg-type]
        lambda: Bucketing(bucket_size=math.inf),  # type: ignore[arg-type]
        lambda: CollusionFilter(memory=math.inf),  # type: ignore[arg-type]
        lambda: CollusionFilter(history_values=10.5),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError):
            bad()


_VALUES = ["-1", "0", "1e-300", "0.3", "0.5", "1", "2", "3", "1e9", "inf", "-inf", "nan"]
_ITERS = ["-1", "0", "0.5", "1", "3", "inf", "nan"]
_BASES = {
    "median": [],
    "trimmed_mean": ["beta"],
    "krum": ["f", "m"],
    "multikrum": ["f", "m"],
    "geomed": ["nu", "max_iter", "tol"],
    "cclip": ["tau", "beta", "iters"],
    "rlr": ["theta", "low_lr"],
    "fedavg": ["uniform", "max_weight"],
}
_WRAPPERS = {
    "normbound": ["norm", "q", "init", "lr", "seed"],
    "bucket": ["s", "seed"],
    "nnm": ["f"],
    "cosfilter": ["min_cos", "beta", "max_drop"],
    "anomaly": ["max_norm", "norm_ratio", "min_cos"],
    "collusion": ["tau", "memory", "hist", "devices"],
}


@st.composite
def _specs(draw: st.DrawFn) -> str:
    def stage(name: str, keys: list[str]) -> str:
        chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=2)) if keys else []
        # Iteration counts stay small: max_iter=1e9 is valid and would just take that long.
        params = ",".join(
            f"{k}={draw(st.sampled_from(_ITERS if k in ('max_iter', 'iters') else _VALUES))}"
            for k in chosen
        )
        return f"{name}:{params}" if params else name

    wrappers = draw(st.lists(st.sampled_from(sorted(_WRAPPERS)), max_size=2))
    base = draw(st.sampled_from(sorted(_BASES)))
    return "+".join([*(stage(w, _WRAPPERS[w]) for w in wrappers), stage(base, _BASES[base])])


@settings(max_examples=150, deadline=None)
@given(_specs(), st.integers(0, 2**32 - 1))
def test_a_spec_either_fails_when_parsed_or_runs_rounds_to_finite_results(
    spec: str, seed: int
) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    batches = [honest_cohort(rng, int(rng.integers(1, 7)), 11) for _ in range(3)]

    # Execute: parsing may refuse (typed); a built aggregator may not fail later.
    try:
        build_aggregator(spec)
    except AggregatorSpecError:
        return
    outs = rounds(spec, batches)

    # Assert
    for out in outs:
        assert out.result.shape == (11,) and np.all(np.isfinite(out.result))


# -- state: every robust aggregator's state goes through bytes and continues exactly -----------


@pytest.mark.parametrize(
    "spec",
    [
        "median",
        "trimmed_mean:0.2",
        "krum:f=1",
        "multikrum:f=0.2",
        "geomed",
        "cclip:tau=0.5,beta=0.5,iters=2",
        "nnm:f=2+cclip:tau=auto,beta=0",
        "bucket:2,seed=3+krum:f=1",
        "cosfilter:max_drop=1+median",
        "anomaly:min_cos=0+cosfilter+geomed",
        "collusion+cosfilter+geomed",
        "normbound:q=0.5+cosfilter+trimmed_mean:0.2",
        "rlr:theta=2,low_lr=-0.5",
    ],
)
def test_robust_state_round_trips_and_continues_bit_for_bit(spec: str) -> None:
    # Prepare: six rounds with an attacker, so screens drop, momenta move, buckets reshuffle.
    rng = np.random.default_rng(5)
    batches = []
    for _ in range(6):
        ups = honest_cohort(rng, 6, 20)
        ups.append(cu("z", -5.0 * ups[0].update.values, 50.0))
        batches.append(ups)
    proc = build_aggregator(spec).create(20)
    state = proc.initialize()
    for ups in batches[:3]:
        state = proc.next(state, ups).state

    # Execute: continue from the state and from its bytes, in a fresh process.
    restored = decode_state(encode_state(state))
    fresh = build_aggregator(spec).create(20)
    a, b = state, restored
    for ups in batches[3:]:
        oa, ob = proc.next(a, ups), fresh.next(b, ups)
        a, b = oa.state, ob.state

        # Assert
        assert oa.result.tobytes() == ob.result.tobytes()
        assert repr(oa.measurements) == repr(ob.measurements)
    assert encode_state(a) == encode_state(b)


def test_collusion_state_with_a_saturated_history_round_trips() -> None:
    # Prepare
    loud = np.zeros(8)
    loud[2] = 3e38
    proc = CollusionFilter().create(8)
    state = proc.initialize()
    for _ in range(2):
        state = proc.next(state, [cu("loud", loud), cu("b", np.ones(8))]).state

    # Execute
    restored = decode_state(encode_state(state))

    # Assert
    assert isinstance(restored, CollusionState)
    assert restored.histories["loud"].values.tobytes() == state.histories["loud"].values.tobytes()
    assert np.all(np.isfinite(restored.histories["loud"].values))
