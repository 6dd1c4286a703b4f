"""Adaptive clipping's count noise sigma_b comes from the configured cohort, not the reports."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import AdaptiveClip, ClientUpdate, DPMean
from coordinator.privacy import FixedSizeSampling


def _zero_reports(n: int, size: int) -> list[ClientUpdate]:
    zero = SparseUpdate(np.arange(size), np.zeros(size, dtype=np.float32), size)
    return [ClientUpdate(f"d{i}", zero, 1.0) for i in range(n)]


def test_dropouts_below_ten_z_reports_keep_the_configured_split() -> None:
    # Prepare: a cohort of 40 (sigma_b = 40 / 20 = 2 > z / 2), accepted when built. Before,
    # sigma_b was recomputed from the round's reports (8 / 20 = 0.4 <= z / 2), so a round with
    # dropouts raised "need 2·sigma_b > z" and was abandoned; and z_u depended on n.
    z = 1.0
    dp = DPMean(z, clip=AdaptiveClip(initial=0.5), sampling=FixedSizeSampling(1000, 40), seed=3)
    proc = dp.create(4)
    state = proc.initialize()
    # Execute: a full round, then one with 8 of the 40 reporting.
    full = proc.next(state, _zero_reports(40, 4))
    few = proc.next(full.state, _zero_reports(8, 4))
    # Assert: the same split both rounds, the one the accountant's z was validated with.
    z_u = (z**-2 - (2 * 2.0) ** -2) ** -0.5
    assert full.measurements["update_noise_multiplier"] == pytest.approx(z_u, rel=1e-12)
    assert few.measurements["update_noise_multiplier"] == pytest.approx(z_u, rel=1e-12)
    assert few.measurements["rounds"] == 2
    assert few.measurements["clients"] == 8
    assert np.isfinite(few.measurements["unclipped_fraction_noised"])


def test_count_noise_with_dropouts_is_the_configured_sigma_b(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: cohort 40 (sigma_b = 2), rounds of 10 reports, all unclipped (norm 0), so
    # (fraction - 1/2) * n - n / 2 is the count noise alone (the fraction divides by n here).
    # The round number stays 0 (2,000 rounds of accounting would be slow), so each round's
    # noise seed is pinned from a counter instead of the OS.
    from coordinator.aggregators import _dp

    seeds = iter(range(1, 10_000))
    monkeypatch.setattr(_dp, "_os_seed", lambda: next(seeds))
    dp = DPMean(1.0, clip=AdaptiveClip(initial=0.5), sampling=FixedSizeSampling(1000, 40))
    proc = dp.create(1)
    state = proc.initialize()
    n, draws = 10, []
    # Execute
    for _ in range(2000):
        out = proc.next(state, _zero_reports(n, 1))
        state = (0, 0.5, out.state[2])  # same round number: the budget is not the subject
        draws.append((out.measurements["unclipped_fraction_noised"] - 0.5) * n - n / 2)
    # Assert: stddev 2 (from the cohort), not 10 / 20 = 0.5 (from the reports); 5% is ~3 SE.
    assert np.std(draws) == pytest.approx(2.0, rel=0.05)


def test_without_a_configured_cohort_sigma_b_still_follows_the_reports() -> None:
    # No denominator, no sampling: no epsilon is claimed and nothing else names the cohort,
    # so the default stays n / 20 (unchanged; robustness.md's weak-DP runs rely on it).
    dp = DPMean(1.0, clip=AdaptiveClip(initial=0.5), seed=1)
    assert dp.count_stddev(40) == 2.0
    proc = dp.create(2)
    with pytest.raises(ValueError, match="2·sigma_b > z"):
        proc.next(proc.initialize(), _zero_reports(8, 2))


def test_denominator_sets_sigma_b_before_the_sampled_cohort() -> None:
    # denom= is the expected cohort the fraction is divided by; it also sets sigma_b, as the
    # build-time check has always assumed.
    dp = DPMean(
        1.0,
        clip=AdaptiveClip(initial=0.5),
        sampling=FixedSizeSampling(1000, 60),
        denominator=50.0,
        seed=2,
    )
    proc = dp.create(2)
    out = proc.next(proc.initialize(), _zero_reports(5, 2))
    assert out.measurements["update_noise_multiplier"] == pytest.approx(
        (1.0 - (2 * 2.5) ** -2) ** -0.5, rel=1e-12
    )


_VALUES = st.one_of(
    st.floats(-10.0, 10.0, width=32),
    st.sampled_from([0.0, 1e-30, -3e38, 3e38, 1e20]),
)


@st.composite
def _neighbours(draw: st.DrawFn) -> tuple[int, list[np.ndarray], np.ndarray, int]:
    """(d, reports as dense float32 rows, one replacement row, the replaced position)."""
    d = draw(st.integers(1, 5))
    n = draw(st.integers(1, 10))
    rows = [
        np.array(draw(st.lists(_VALUES, min_size=d, max_size=d)), dtype=np.float32)
        for _ in range(n)
    ]
    other = np.array(draw(st.lists(_VALUES, min_size=d, max_size=d)), dtype=np.float32)
    return d, rows, other, draw(st.integers(0, n - 1))


def _reports(rows: list[np.ndarray]) -> list[ClientUpdate]:
    d = rows[0].shape[0]
    return [
        ClientUpdate(f"d{i}", SparseUpdate(np.arange(d), r, d), 1.0) for i, r in enumerate(rows)
    ]


@settings(max_examples=80, deadline=None)
@given(_neighbours(), st.integers(0, 2**32), st.booleans())
def test_replace_one_moves_the_release_by_at_most_the_sensitivity(
    case: tuple[int, list[np.ndarray], np.ndarray, int], seed: int, adaptive: bool
) -> None:
    # Prepare: two fleets that differ in one device's report (replace-one), the same noise seed,
    # a cohort of 40 of which 1 to 10 reported (dropouts).
    d, rows, other, pos = case
    clip: float | AdaptiveClip = AdaptiveClip(initial=0.7) if adaptive else 0.7
    dp = DPMean(1.0, clip=clip, sampling=FixedSizeSampling(1000, 40), seed=seed)
    swapped = [*rows[:pos], other, *rows[pos + 1 :]]
    # Execute
    a, b = dp.create(d), dp.create(d)
    out_a = a.next(a.initialize(), _reports(rows))
    out_b = b.next(b.initialize(), _reports(swapped))
    # Assert: the noise split does not depend on the reports (nor on how many arrived)...
    assert out_a.measurements["update_noise_multiplier"] == dp.update_noise_multiplier(40)
    assert out_b.measurements["update_noise_multiplier"] == dp.update_noise_multiplier(40)
    # ...so with the same noise the released sums differ by at most 2C (plus float32 rounding
    # of the released mean), and the noised count by at most 1 report.
    n = len(rows)
    diff = (out_a.result.astype(np.float64) - out_b.result.astype(np.float64)) * n
    slack = 1e-6 * n * (1.0 + float(np.abs(out_a.result).max()) + float(np.abs(out_b.result).max()))
    assert float(np.linalg.norm(diff)) <= 2 * 0.7 + slack
    if adaptive:
        fa = out_a.measurements["unclipped_fraction_noised"]
        fb = out_b.measurements["unclipped_fraction_noised"]
        assert abs(fa - fb) * n <= 1.0 + 1e-9


def test_engine_commits_a_round_whose_dropouts_leave_few_reports() -> None:
    # Prepare: the task's dp stage as the service builds it from
    # "dp:clip=0.5,quantile=0.5,z=1,population=1000,sample=40+fedavg" (no denom=): a cohort of
    # 40, of which 8 report before the round closes. Before, the round raised
    # "need 2·sigma_b > z" in close_round (sigma_b = 8 / 20) and the service abandoned it.
    from compression import CodecConfig, ModelSpec, UpdateCodec
    from coordinator.aggregators import build_aggregator
    from coordinator.engine import EngineConfig, RoundEngine

    spec = ModelSpec.from_shapes([("w", (3,))])
    dense = CodecConfig.dense()
    agg = build_aggregator("dp:clip=0.5,quantile=0.5,z=1,population=1000,sample=40,seed=4+fedavg")
    eng = RoundEngine(
        spec,
        np.zeros(spec.size, np.float32),
        agg,
        EngineConfig(clients_per_round=40, min_reports=5, codec=dense),
    )
    plan = eng.open_round([f"d{i:03d}" for i in range(1000)])
    codec = UpdateCodec(spec, dense)
    for device in plan.selected[:8]:
        frame, _ = codec.encode(np.full(3, 0.1, np.float32), np.random.default_rng(0))
        eng.submit(plan.round_id, device, frame)
    # Execute
    out = eng.close_round(plan.round_id)
    # Assert
    assert out.committed and out.reports == 8 and out.version == 1
    assert out.measurements["update_noise_multiplier"] == pytest.approx(
        (1.0 - (2 * 2.0) ** -2) ** -0.5, rel=1e-12
    )


def test_an_explicit_count_std_too_small_for_z_is_refused_when_built() -> None:
    # Before, only the default sigma_b was checked when the stage was built: count_std=0.4
    # with z=1 built, and then every round raised "need 2·sigma_b > z" (a service task that
    # abandons every round). The split does not depend on the round, so refuse it up front.
    from coordinator.aggregators import AggregatorSpecError, build_aggregator

    with pytest.raises(ValueError, match=r"count noise stddev 0\.4 .*need 2·sigma_b > z"):
        DPMean(1.0, clip=AdaptiveClip(count_stddev=0.4), sampling=FixedSizeSampling(1000, 40))
    with pytest.raises((AggregatorSpecError, ValueError), match="2·sigma_b > z"):
        build_aggregator("dp:clip=1,z=1,quantile=0.5,count_std=0.5,population=1000,sample=40")
    # Just above z / 2 is fine.
    DPMean(1.0, clip=AdaptiveClip(count_stddev=0.51), sampling=FixedSizeSampling(1000, 40))
