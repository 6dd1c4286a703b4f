"""The accountant: matches dp_accounting used directly, monotone in rounds, calibration inverts."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp

from coordinator.privacy import (
    FixedSizeSampling,
    PoissonSampling,
    PrivacyAccountant,
    calibrate_noise_multiplier,
)

DELTA = 1e-5


def test_poisson_pld_matches_dp_accounting_directly() -> None:
    # Prepare
    acc = PrivacyAccountant(1.1, PoissonSampling(0.01))
    direct = pld.PLDAccountant()
    direct.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 200
        )
    )
    # Execute / Assert
    assert acc.epsilon(200, DELTA) == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)


def test_poisson_rdp_matches_and_is_looser_than_pld() -> None:
    direct = rdp.RdpAccountant()
    direct.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(0.9)), 100
        )
    )
    eps_rdp = PrivacyAccountant(0.9, PoissonSampling(0.02), "rdp").epsilon(100, DELTA)
    eps_pld = PrivacyAccountant(0.9, PoissonSampling(0.02), "pld").epsilon(100, DELTA)
    assert eps_rdp == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    assert eps_pld < eps_rdp


def test_fixed_size_uses_replace_one_with_halved_multiplier() -> None:
    # Replace-one moves the clipped sum by up to 2C: the event's multiplier is z / 2.
    direct = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    direct.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.SampledWithoutReplacementDpEvent(
                1000, 20, dp_accounting.GaussianDpEvent(1.5 / 2)
            ),
            50,
        )
    )
    acc = PrivacyAccountant(1.5, FixedSizeSampling(1000, 20))
    assert acc.epsilon(50, DELTA) == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    with pytest.raises(ValueError, match="PLD"):
        PrivacyAccountant(1.5, FixedSizeSampling(1000, 20), "pld")


def test_fixed_size_without_amplification_is_the_gaussian_of_sensitivity_two_c() -> None:
    # Prepare: m = N (every device every round), z = 3, 40 rounds. Replacing one device's
    # clipped update moves the sum by up to 2C against noise z·C: by hand, each round's RDP is
    # alpha (2C)^2 / (2 (zC)^2) = 2 alpha / z^2 (Mironov 2017), composed additively.
    z, rounds = 3.0, 40
    orders = np.asarray(rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
    by_hand, _ = rdp.rdp_privacy_accountant.compute_epsilon(
        orders, rounds * 2.0 * orders / z**2, DELTA
    )
    # Execute
    got = PrivacyAccountant(z, FixedSizeSampling(500, 500)).epsilon(rounds, DELTA)
    # Assert
    assert got == pytest.approx(by_hand, rel=1e-9)


def test_epsilon_is_monotone_in_rounds_and_noise() -> None:
    acc = PrivacyAccountant(1.0, PoissonSampling(0.05), "rdp")
    eps = [acc.epsilon(t, DELTA) for t in (0, 1, 5, 20, 80)]
    assert eps[0] == 0.0
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False))
    assert PrivacyAccountant(2.0, PoissonSampling(0.05), "rdp").epsilon(20, DELTA) < eps[3]


def test_max_rounds_is_the_last_round_within_budget() -> None:
    acc = PrivacyAccountant(1.0, PoissonSampling(0.05), "rdp")
    budget = 2.0
    t = acc.max_rounds(budget, DELTA)
    assert t > 0
    assert acc.epsilon(t, DELTA) <= budget < acc.epsilon(t + 1, DELTA)


def test_calibrate_noise_multiplier_hits_the_target() -> None:
    sampling = PoissonSampling(0.1)
    z = calibrate_noise_multiplier(4.0, DELTA, 30, sampling, "rdp")
    eps = PrivacyAccountant(z, sampling, "rdp").epsilon(30, DELTA)
    assert eps <= 4.0
    assert eps > 3.9


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        PoissonSampling(0.0)
    with pytest.raises(ValueError):
        PrivacyAccountant(0.0, PoissonSampling(0.1))
    with pytest.raises(ValueError):
        PrivacyAccountant(1.0, PoissonSampling(0.1)).epsilon(3, 0.0)
    with pytest.raises(ValueError):
        PrivacyAccountant(1.0, PoissonSampling(0.1), "exact")  # type: ignore[arg-type]
