"""Adaptive clipping's count noise sigma_b comes from the configured cohort, not the reports."""

from __future__ import annotations

import numpy as np
import pytest

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
