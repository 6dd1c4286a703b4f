"""DPMean's helpers and figures pinned directly (helper s62d's mutation hunt): `seed_note` warns
of a seeded dp stage, and of nothing else; the count noise sigma_b and the split of z; the
fixed-size cohort check; the sum released when the inner mean weighs reports below 1."""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import AdaptiveClip, ClientUpdate, DPMean, FedAvg
from coordinator.aggregators._dp import seed_note
from coordinator.privacy import FixedSizeSampling, PoissonSampling


def test_seed_note_names_a_seeded_stage_and_nothing_else() -> None:
    # A seeded stage, with or without accounting, gets the note (it names the seed).
    note = seed_note(DPMean(1.0, seed=3))
    assert note is not None and "seed=3" in note
    assert seed_note(DPMean(1.0, seed=0)) is not None  # seed 0 is a seed too
    # No stage, or a stage drawing fresh OS noise: no note.
    assert seed_note(None) is None
    assert seed_note(DPMean(1.0)) is None


def _report(i: int, values: list[float]) -> ClientUpdate:
    return ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.array(values, np.float32)), 1.0)


def test_count_stddev_is_zero_for_a_fixed_clip_and_the_configured_cohort_over_20() -> None:
    adaptive = AdaptiveClip(initial=1.0)
    # A fixed clip releases no count.
    assert DPMean(1.0, clip=0.5).count_stddev(40.0) == 0.0
    # Andrew et al.'s default: the configured cohort / 20, the denominator first.
    assert DPMean(1.0, clip=adaptive, denominator=40.0).count_stddev(7.0) == 2.0
    fixed = DPMean(1.0, clip=adaptive, sampling=FixedSizeSampling(1000, 60), delta=1e-6)
    assert fixed.count_stddev(7.0) == 3.0
    # No cohort configured: the round's reports / 20; count_std= overrides all of them.
    assert DPMean(0.1, clip=adaptive).count_stddev(30.0) == 1.5
    given = AdaptiveClip(initial=1.0, count_stddev=0.75)
    assert DPMean(1.0, clip=given, denominator=40.0).count_stddev(7.0) == 0.75


def test_a_count_std_at_or_below_half_z_is_refused_when_built_without_a_cohort() -> None:
    # 2 sigma_b must exceed z for the split z_u = (z^-2 - (2 sigma_b)^-2)^-1/2 to exist; with
    # no cohort configured only count_std= decides it.
    with pytest.raises(ValueError, match="is too small for noise multiplier"):
        DPMean(1.0, clip=AdaptiveClip(initial=1.0, count_stddev=0.5))
    dp = DPMean(1.0, clip=AdaptiveClip(initial=1.0, count_stddev=0.625))
    # 1 - (1 / 1.25)^2 = 0.36, so z_u = 1 / 0.6.
    assert dp.update_noise_multiplier(3.0) == pytest.approx(1 / 0.6, rel=1e-12)


def test_more_reports_than_the_accounted_cohort_are_refused_and_exactly_it_taken() -> None:
    # Prepare: fixed-size accounting of a cohort of 3.
    dp = DPMean(1.0, clip=1.0, sampling=FixedSizeSampling(100, 3), delta=1e-5, seed=1)
    proc = dp.create(2)
    reports = [_report(i, [0.1, 0.2]) for i in range(4)]
    # Execute / Assert: 4 reports sample at a higher rate than epsilon is computed for.
    with pytest.raises(ValueError, match="4 reports but the accountant assumes a cohort of 3"):
        proc.next(proc.initialize(), reports)
    out = proc.next(proc.initialize(), reports[:3])
    assert out.measurements["clients"] == 3


def test_a_mean_capping_weights_below_one_still_releases_the_sum_of_clipped_reports() -> None:
    # Prepare: FedAvg(max_weight=0.25) weighs every clipped report 0.25; DPMean divides that
    # back out, so the released mean is sum / denominator. Noise negligible (z C = 1e-9).
    reports = [_report(0, [3.0, 4.0]), _report(1, [0.5, 0.0]), _report(2, [0.0, -1.0])]
    dp = DPMean(1e-9, clip=1.0, inner=FedAvg(uniform=True, max_weight=0.25), denominator=2.0)
    proc = dp.create(2)
    # Execute
    out = proc.next(proc.initialize(), reports)
    # Assert: (3, 4) clipped to (0.6, 0.8); the sum (1.1, -0.2), over 2.
    np.testing.assert_allclose(out.result, [0.55, -0.1], rtol=1e-6)


def test_the_default_count_noise_needs_a_cohort_above_ten_z() -> None:
    # sigma_b = cohort / 20 and 2 sigma_b > z: at z = 1 a cohort of 10 is refused, 10.2 taken.
    adaptive = AdaptiveClip(initial=1.0)
    with pytest.raises(ValueError, match="set count_std= above z / 2"):
        DPMean(1.0, clip=adaptive, denominator=10.0)
    dp = DPMean(1.0, clip=adaptive, denominator=10.2)
    assert dp.count_stddev(3.0) == pytest.approx(0.51, rel=1e-12)


@pytest.mark.parametrize("z_u", [0.5, 0.7, 1.0])
def test_the_clip_ceiling_counts_a_noise_multiplier_below_one_as_one(z_u: float) -> None:
    # max(z_u, 1) · C / min(denominator, 1) <= 1e30: the clipped reports alone scale with C.
    assert DPMean.largest_clip(z_u, 2.0) == 1e30
    assert DPMean.largest_clip(z_u, 0.25) == 0.25e30
    assert DPMean.largest_clip(4.0, 0.5) == pytest.approx(0.125e30, rel=1e-15)


def test_an_epsilon_budget_below_one_builds() -> None:
    dp = DPMean(1.0, sampling=PoissonSampling(0.1), denominator=10.0, epsilon_budget=0.5)
    assert dp.epsilon_budget == 0.5


def test_one_report_without_a_denominator_is_divided_by_one() -> None:
    # No denominator: the noised sum over the number of reports, here 1 (noise z C = 1e-8).
    dp = DPMean(1e-9, clip=10.0)
    proc = dp.create(2)
    # Execute
    out = proc.next(proc.initialize(), [_report(0, [0.3, 0.4])])
    # Assert
    np.testing.assert_allclose(out.result, [0.3, 0.4], rtol=1e-6)
    assert out.measurements["noise_stddev"] == pytest.approx(1e-8, rel=1e-12)


def test_a_round_without_reports_releases_the_noise_over_one() -> None:
    # No denominator and no report: max(n, 1) divides by 1, and no weight is rescaled.
    dp = DPMean(2.0, clip=0.5, seed=4)
    proc = dp.create(3)
    # Execute
    out = proc.next(proc.initialize(), [])
    # Assert: finite noise of stddev z C = 1, reported as such.
    assert np.all(np.isfinite(out.result))
    assert out.measurements["noise_stddev"] == 1.0
    assert out.measurements["clients"] == 0
