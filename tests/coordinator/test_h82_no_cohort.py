"""Every DPMean that accounts epsilon splits its noise the same way whatever a round's reports.

docs/privacy.md (mechanism, step 5) says adaptive clipping's sigma_b follows the number of
reports only when no cohort is configured, and that such a `dp` has no accountant, so no
reported epsilon rests on a split that moves with a round's report count. These tests hold
the code to that.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregators import AdaptiveClip, DPMean, build_aggregator
from coordinator.privacy import FixedSizeSampling, PoissonSampling


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    z=st.floats(0.05, 2.0),
    sample=st.integers(50, 500),
    extra=st.integers(0, 5000),
    poisson=st.booleans(),
    with_denominator=st.booleans(),
    reports=st.lists(st.integers(1, 500), min_size=2, max_size=6),
)
def test_an_accounting_dp_mean_splits_the_noise_the_same_for_every_report_count(
    z: float, sample: int, extra: int, poisson: bool, with_denominator: bool, reports: list[int]
) -> None:
    population = sample + extra
    sampling = (
        PoissonSampling(sample / population) if poisson else FixedSizeSampling(population, sample)
    )
    # Poisson sampling needs a fixed denominator (refused without one, checked below).
    denominator = float(sample) if poisson or with_denominator else None
    dp = DPMean(z, clip=AdaptiveClip(initial=1.0), denominator=denominator, sampling=sampling)
    # What a round divides by and splits at: the denominator, else its number of reports.
    used = [denominator if denominator is not None else float(n) for n in reports]
    assert dp.configured_cohort() == float(sample)
    assert {dp.count_stddev(d) for d in used} == {sample / 20.0}
    split = (z**-2 - (2.0 * sample / 20.0) ** -2) ** -0.5
    (z_u,) = {dp.update_noise_multiplier(d) for d in used}
    assert z_u == pytest.approx(split, rel=1e-12)


def test_poisson_sampling_without_a_cohort_is_refused() -> None:
    with pytest.raises(ValueError, match="fixed denominator"):
        DPMean(1.0, clip=AdaptiveClip(initial=1.0), sampling=PoissonSampling(0.1))


def test_without_sampling_there_is_no_accountant_and_no_epsilon() -> None:
    # No cohort configured: sigma_b follows the reports, and nothing is accounted (an eps=
    # budget is refused there: tests/coordinator/test_s14_eps_needs_sampling.py).
    dp = build_aggregator("dp:clip=1,quantile=0.5,z=1+fedavg")
    assert isinstance(dp, DPMean)
    assert dp.configured_cohort() is None
    assert dp.count_stddev(40) == 2.0 and dp.count_stddev(80) == 4.0
    proc = dp.create(3)
    assert proc.accountant is None
