"""Accounting figures pinned to dp_accounting or their closed forms (helper s62d's mutation
hunt): the RDP curve a task adds to the coordinator-wide composition (`rdp_curve`: capped by the
unsampled Gaussian under "auto" with fixed-size sampling, dp_accounting's curve as it is under
"rdp"), `composed_rdp_epsilon`'s delta range and its sum of curves, and the distributed-DP
floor `min_round_rho` over the whole dropout range it accepts, [0, 1)."""

from __future__ import annotations

import dp_accounting
import dp_accounting.pld
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from coordinator.privacy import (
    FixedSizeSampling,
    PoissonSampling,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    composed_rdp_epsilon,
    pld_value_interval,
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


@pytest.mark.parametrize("shape", [(1,), (), (3,), (2, 3)])
def test_composed_epsilon_refuses_a_curve_off_the_order_grid(shape: tuple[int, ...]) -> None:
    # A curve of one value (or a scalar) would broadcast over every order: refused, not summed.
    orders = rdp_orders()
    with pytest.raises(ValueError, match="an RDP curve of"):
        composed_rdp_epsilon([np.zeros(len(orders)), np.full(shape, 0.5)], 1e-5)


@pytest.mark.parametrize(
    ("epsilon", "rounds"), [(0.0, 10), (-1.0, 10), (float("nan"), 10), (1.0, 0), (1.0, -3)]
)
def test_calibration_refuses_no_budget_or_no_rounds_by_name(epsilon: float, rounds: int) -> None:
    with pytest.raises(ValueError, match="need epsilon > 0 and rounds >= 1"):
        calibrate_noise_multiplier(epsilon, 1e-5, rounds, FixedSizeSampling(N, M))


def test_calibration_for_a_single_round_meets_its_target() -> None:
    # Prepare: the whole population every round, so each round is the unsampled Gaussian of
    # multiplier z / 2 (replace-one): RDP alpha / (2 (z / 2)^2), recomputed here.
    orders = np.asarray(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)

    def eps(z: float) -> float:
        curve = orders / (2 * (z / 2) ** 2)
        return float(rdp_privacy_accountant.compute_epsilon(orders, curve, 1e-5)[0])

    # Execute
    z = calibrate_noise_multiplier(0.5, 1e-5, 1, FixedSizeSampling(10, 10), "rdp")
    # Assert: enough noise for one round, and not 1% more than enough.
    assert eps(z) <= 0.5 < eps(0.99 * z)


@pytest.mark.parametrize("epsilon", [60.0, 0.5])
def test_pld_calibration_answers_less_noise_than_rdp_and_meets_the_target(
    epsilon: float,
) -> None:
    # Prepare: one unsampled round (q = 1); at epsilon 60 z is about 0.13 (a coarse PLD grid),
    # at 0.5 about 7 (a narrow privacy loss): each PLD is quick. At 0.5, half the RDP answer
    # reads epsilon 0.97, within 1 of the target but above it. dp_accounting's own RDP
    # calibration is the search's upper end.
    delta = 1e-5
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE

    def event(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.PoissonSampledDpEvent(1.0, dp_accounting.GaussianDpEvent(z))

    z_rdp = dp_accounting.calibrate_dp_mechanism(
        lambda: rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation),
        event,
        epsilon,
        delta,
        dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
    )

    def pld_epsilon(z: float) -> float:
        # dp_accounting's PLD accountant on z's own grid, 1e-4 (0.5 / z)^2 below z = 0.5.
        step = 1e-4 if z >= 0.5 else 1e-4 * (0.5 / z) ** 2
        acc = dp_accounting.pld.PLDAccountant(
            neighboring_relation=relation, value_discretization_interval=step
        )
        acc.compose(event(z))
        return float(acc.get_epsilon(delta))

    # Execute
    z = calibrate_noise_multiplier(epsilon, delta, 1, PoissonSampling(1.0))
    # Assert: PLD's answer meets the target, misses it one search tolerance (0.001 z_rdp)
    # lower, and is below the RDP answer (the search bisects below it; returning z_rdp would
    # add noise PLD does not need).
    assert pld_epsilon(z) <= epsilon < pld_epsilon(z - 1e-3 * z_rdp)
    assert z < 0.99 * z_rdp


@pytest.mark.parametrize("sizes", [(10, 1), (10, 10), (1, 1)])
def test_fixed_size_sampling_takes_one_device_and_the_whole_population(
    sizes: tuple[int, int],
) -> None:
    assert FixedSizeSampling(*sizes).sample_size == sizes[1]


@pytest.mark.parametrize("sizes", [(10, 0), (10, 11)])
def test_fixed_size_sampling_refuses_a_cohort_outside_one_to_population(
    sizes: tuple[int, int],
) -> None:
    with pytest.raises(ValueError, match="need 1 <= sample_size <= population"):
        FixedSizeSampling(*sizes)


@pytest.mark.parametrize(
    ("z", "step"), [(0.5, 1e-4), (3.0, 1e-4), (0.25, 4e-4), (0.05, 1e-2), (0.001, 25.0)]
)
def test_the_pld_grid_step_is_coarsened_by_the_square_below_z_one_half(
    z: float, step: float
) -> None:
    # 1e-4 from z = 0.5 up, else 1e-4 (0.5 / z)^2: the grid is no larger than at z = 0.5.
    assert pld_value_interval(z) == pytest.approx(step, rel=1e-12)


@pytest.mark.parametrize("dropout", [0.5, 0.75, 0.999])
def test_min_round_rho_takes_every_dropout_below_one(dropout: float) -> None:
    # (1 - dropout) / (2 z^2) for any dropout in [0, 1), the range min_round_rho checks.
    assert min_round_rho(2.0, dropout) == pytest.approx((1 - dropout) / 8, rel=1e-12)
