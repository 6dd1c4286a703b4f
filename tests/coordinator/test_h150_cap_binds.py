"""helper-150: where the unsampled Gaussian's cap on fixed-size sampling's RDP binds
(docs/privacy.md, "Sampling never costs privacy"). The doc said "from about m = N / 3 up, and at
tiny z (0.005) below that too"; simulator.md's own DP example (N = 50, m = 10, z = 0.5, 10
rounds) reports the unsampled Gaussian's epsilon, so the cap binds at m = N / 5 there. The
figures the doc now quotes, each from Plume's accountant (`auto`: capped; `rdp`: dp_accounting's
sampled bound as it is), at delta = 1e-5."""

from __future__ import annotations

import pytest

from coordinator.privacy import FixedSizeSampling, PrivacyAccountant

DELTA = 1e-5


def _eps(population: int, sample: int, z: float, rounds: int) -> tuple[float, float]:
    """(capped, sampled) epsilon."""
    sampling = FixedSizeSampling(population, sample)
    return (
        PrivacyAccountant(z, sampling, "auto").epsilon(rounds, DELTA),
        PrivacyAccountant(z, sampling, "rdp").epsilon(rounds, DELTA),
    )


def test_the_simulators_example_reports_the_unsampled_gaussians_epsilon() -> None:
    capped, sampled = _eps(50, 10, 0.5, 10)
    unsampled, _ = _eps(50, 50, 0.5, 10)  # m = N: the Gaussian mechanism of sensitivity 2C
    assert round(sampled, 2) == 144.87
    assert round(capped, 2) == 138.69 and capped == unsampled


@pytest.mark.parametrize(
    ("population", "below", "binds", "z", "rounds"),
    [
        (50, 7, 8, 0.5, 10),  # m = N / 6
        (1000, 32, 33, 0.5, 100),  # m = N / 30
    ],
)
def test_at_z_one_half_the_cap_binds_far_below_a_third_of_n(
    population: int, below: int, binds: int, z: float, rounds: int
) -> None:
    capped, sampled = _eps(population, below, z, rounds)
    assert capped == sampled
    capped, sampled = _eps(population, binds, z, rounds)
    assert capped < sampled * (1 - 1e-3)


def test_at_z_one_fifth_the_cap_binds_at_a_cohort_of_one() -> None:
    capped, sampled = _eps(1000, 1, 0.2, 100)
    assert (round(capped, 1), round(sampled, 1)) == (5611.8, 8697.9)


def test_at_z_one_the_cap_lowers_epsilon_by_a_tenth_of_a_percent_from_about_a_third_of_n() -> None:
    capped, sampled = _eps(1000, 386, 1.0, 100)
    assert sampled * (1 - 1e-3) <= capped <= sampled
    capped, sampled = _eps(1000, 387, 1.0, 100)
    assert (round(capped, 2), round(sampled, 2)) == (294.86, 295.51)
