"""Accounting figures pinned to dp_accounting or their closed forms (helper s62d's mutation
hunt): the RDP curve a task adds to the coordinator-wide composition (`rdp_curve`: capped by the
unsampled Gaussian under "auto" with fixed-size sampling, dp_accounting's curve as it is under
"rdp"), `composed_rdp_epsilon`'s delta range and its sum of curves, and the distributed-DP
floor `min_round_rho` over the whole dropout range it accepts, [0, 1)."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from coordinator.privacy import (
    FixedSizeSampling,
    PrivacyAccountant,
    composed_rdp_epsilon,
    rdp_curve,
    rdp_orders,
)
from coordinator.secure._dp import min_round_rho

from .test_s60b_dp_config_edges import _fixed_curve

# docs/privacy.md's example where the cap binds: N = 110, m = 100, z = 4.
N, M, Z = 110, 100, 4.0


def test_rdp_curve_is_capped_under_auto_and_as_dp_accounting_has_it_under_rdp() -> None:
    # Prepare: dp_accounting's one-round replace-one curve and the unsampled Gaussian's
    # alpha / (2 (z / 2)^2), computed here.
    orders, sampled = _fixed_curve(N, M, Z)
    gaussian = orders / (2 * (Z / 2) ** 2)
    capped = np.minimum(sampled, gaussian)
    assert np.any(capped < sampled)  # the cap binds at some orders
    sampling = FixedSizeSampling(N, M)
    # Execute
    auto = rdp_curve(PrivacyAccountant(Z, sampling, "auto"), 50)
    plain = rdp_curve(PrivacyAccountant(Z, sampling, "rdp"), 50)
    # Assert: "auto" composes the capped round, "rdp" dp_accounting's round as it is (capping
    # it would under-count the epsilon of an rdp task in the coordinator-wide figure).
    np.testing.assert_allclose(auto, 50 * capped, rtol=1e-12)
    np.testing.assert_allclose(plain, 50 * sampled, rtol=1e-12)


@pytest.mark.parametrize("delta", [0.0, 1.0, 1.5, -1e-9])
def test_composed_epsilon_refuses_a_delta_outside_zero_one_by_name(delta: float) -> None:
    curve = np.ones(len(rdp_orders()))
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        composed_rdp_epsilon([curve], delta)


@pytest.mark.parametrize("delta", [1e-300, 0.75, 0.999])
def test_composed_epsilon_takes_any_delta_inside_zero_one(delta: float) -> None:
    # Prepare: one curve of 2 · alpha (a Gaussian's alpha / (2 sigma^2) at sigma = 1/2).
    orders = np.asarray(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
    curve = 2.0 * orders
    expected = rdp_privacy_accountant.compute_epsilon(orders, curve, delta)[0]
    # Execute / Assert
    assert composed_rdp_epsilon([curve], delta) == expected


def test_composed_epsilon_adds_the_curves_as_dp_accounting_composes_their_events() -> None:
    # Prepare: two Gaussian mechanisms (sigma 2 and 3) as RDP curves alpha / (2 sigma^2).
    orders = np.asarray(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(2.0), dp_accounting.GaussianDpEvent(3.0)]
        )
    )
    # Execute
    got = composed_rdp_epsilon([orders / 8.0, orders / 18.0], 1e-6)
    # Assert
    assert got == pytest.approx(acc.get_epsilon(1e-6), rel=1e-12)


@pytest.mark.parametrize("dropout", [0.5, 0.75, 0.999])
def test_min_round_rho_takes_every_dropout_below_one(dropout: float) -> None:
    # (1 - dropout) / (2 z^2) for any dropout in [0, 1), the range min_round_rho checks.
    assert min_round_rho(2.0, dropout) == pytest.approx((1 - dropout) / 8, rel=1e-12)
