"""Distributed DP's bounds (coordinator.secure._dp) recomputed from their formulas in the
module docstring, at their edges: one survivor, k = 1, a zero sensitivity, sigma^2 = 1/4
exactly (where Kairouz et al.'s bound starts to apply), and the accountant's composition
against dp_accounting's RdpAccountant directly."""

from __future__ import annotations

import math
from collections.abc import Callable

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from coordinator.secure._dp import (
    RDP_ORDERS,
    DistributedDpAccountant,
    ddg_epsilon,
    ddg_tau,
    integer_sensitivity,
    l1_sensitivity,
    min_round_rho,
    skellam_rdp,
)
from protocol.secagg import NoiseKind

DELTA = 1e-6


def test_integer_sensitivity_is_s_c_plus_root_k() -> None:
    # s = (2^b - 1) / (2 C'): C = 1.5, C' = 0.25, b = 12, k = 9.
    assert integer_sensitivity(1.5, 0.25, 12, 9) == pytest.approx(4095 / 0.5 * 1.5 + 3.0)


def test_l1_sensitivity_takes_the_smaller_bound_and_accepts_the_edges() -> None:
    assert l1_sensitivity(10.0, 4) == 20.0  # sqrt(k) Delta2 = 20 < Delta2^2 = 100
    assert l1_sensitivity(1.5, 100) == 2.25  # Delta2^2 = 2.25 < sqrt(k) Delta2 = 15
    assert l1_sensitivity(0.0, 1) == 0.0
    assert l1_sensitivity(3.0, 1) == 3.0
    for bad in [(-1e-9, 1), (1.0, 0)]:
        with pytest.raises(ValueError):
            l1_sensitivity(*bad)


def test_ddg_tau_of_one_survivor_is_zero_and_of_three_is_two_terms() -> None:
    s2 = 0.3
    assert ddg_tau(s2, 1) == 0.0
    expected = 10 * (math.exp(-2 * math.pi**2 * s2 / 2) + math.exp(-2 * math.pi**2 * s2 * 2 / 3))
    assert ddg_tau(s2, 3) == pytest.approx(expected, rel=1e-12)


def test_ddg_epsilon_of_one_survivor_in_one_coordinate_is_delta_over_sigma() -> None:
    # n = 1: tau = 0, so both of Kairouz et al.'s terms are Delta2 / sigma.
    assert ddg_epsilon(6.0, 4.0, 1, 1) == pytest.approx(3.0, rel=1e-12)
    assert ddg_epsilon(0.0, 4.0, 1, 1) == 0.0


def test_ddg_epsilon_at_sigma_squared_one_quarter_uses_kairouz_bound() -> None:
    # Prepare: sigma^2 = 1/4 exactly, n = 4 survivors, k = 2, Delta2 = 100.
    sens, s2, n, k = 100.0, 0.25, 4, 2
    tau = 10 * sum(math.exp(-2 * math.pi**2 * s2 * j / (j + 1)) for j in range(1, n))
    a = math.sqrt(sens**2 / (n * s2) + 2 * tau * k)
    b = sens / math.sqrt(n * s2) + tau * math.sqrt(k)
    single = sens / math.sqrt(s2)
    expected = min(a, b, single)
    assert expected < single  # the bound differs from one survivor's here
    # Execute / Assert
    assert ddg_epsilon(sens, s2, n, k) == pytest.approx(expected, rel=1e-12)
    # Just below 1/4, one survivor's bound is used.
    assert ddg_epsilon(sens, 0.2499, n, k) == pytest.approx(sens / math.sqrt(0.2499), rel=1e-12)


def test_ddg_epsilon_takes_the_second_term_when_it_is_the_least() -> None:
    # Prepare: many coordinates and a small shift: Delta2 / (sqrt(n) sigma) + tau sqrt(k) is
    # below both the root term and one survivor's Delta2 / sigma.
    sens, s2, n, k = 1.0, 1.0, 4, 10_000
    tau = 10 * sum(math.exp(-2 * math.pi**2 * s2 * j / (j + 1)) for j in range(1, n))
    a = math.sqrt(sens**2 / (n * s2) + 2 * tau * k)
    b = sens / math.sqrt(n * s2) + tau * math.sqrt(k)
    assert b < a and b < sens / math.sqrt(s2)
    # Execute / Assert
    assert ddg_epsilon(sens, s2, n, k) == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda: ddg_tau(1.0, 0),
        lambda: ddg_tau(0.0, 3),
        lambda: ddg_epsilon(1.0, 1.0, 0, 1),
        lambda: ddg_epsilon(1.0, 0.0, 3, 1),
        lambda: ddg_epsilon(1.0, 1.0, 3, 0),
        lambda: ddg_epsilon(-1e-9, 1.0, 3, 1),
        lambda: skellam_rdp([1.0], 1.0, 1.0, 1.0),
        lambda: skellam_rdp([2.0], 1.0, 1.0, 0.0),
        lambda: skellam_rdp([2.0], -1e-9, 1.0, 1.0),
        lambda: skellam_rdp([2.0], 1.0, -1e-9, 1.0),
    ],
)
def test_out_of_range_arguments_are_refused(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="need|must be"):
        call()


def _skellam(alpha: float, d2: float, d1: float, v: float) -> float:
    a = math.ceil(alpha)
    return a * d2**2 / (2 * v) + min(((2 * a - 1) * d2**2 + 6 * d1) / (4 * v * v), 3 * d1 / (2 * v))


@pytest.mark.parametrize("v", [3.0, 400.0])
def test_skellam_rdp_is_agarwal_et_al_at_the_ceiling_order(v: float) -> None:
    # v = 3 takes the 3 Delta1 / (2 V) branch of the min, v = 400 the other one.
    orders = [1.5, 2.0, 7.25, 64.0]
    d2, d1 = 5.0, 12.0
    got = skellam_rdp(orders, d2, d1, v)
    assert got.tolist() == pytest.approx([_skellam(a, d2, d1, v) for a in orders], rel=1e-12)
    assert skellam_rdp([2.0], 0.0, 0.0, v).tolist() == [0.0]  # zero sensitivity is allowed


def test_min_round_rho_and_its_edges() -> None:
    assert min_round_rho(2.0, 0.0) == 1 / 8
    assert min_round_rho(2.0, 0.25) == pytest.approx(0.75 / 8, rel=1e-15)
    with pytest.raises(ValueError, match="expected_dropout"):
        min_round_rho(2.0, 1.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        min_round_rho(0.0, 0.0)


def test_the_accountant_composes_as_dp_accounting_does() -> None:
    # Prepare: two discrete-Gaussian rounds and one Skellam round.
    acc = DistributedDpAccountant(DELTA)
    acc.record_round(NoiseKind.DISCRETE_GAUSSIAN, 50.0, 900.0, 10, 4)
    acc.record_round(NoiseKind.DISCRETE_GAUSSIAN, 50.0, 900.0, 7, 4)
    acc.record_round(NoiseKind.SKELLAM, 50.0, 100.0, 8, 4)
    # Independent: zCDP rho = eps^2 / 2 with eps = Delta2 / (sqrt(n) sigma) (tau underflows at
    # sigma^2 = 900), Skellam at V = 8 · 100 with Delta1 = min(sqrt(k) Delta2, Delta2^2).
    rdp_acc = rdp_privacy_accountant.RdpAccountant(list(RDP_ORDERS))
    rdp_acc.compose(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.ZCDpEvent((50.0 / math.sqrt(n * 900.0)) ** 2 / 2) for n in (10, 7)]
        )
    )
    sk = np.array([_skellam(a, 50.0, 100.0, 800.0) for a in RDP_ORDERS])
    total = np.asarray(rdp_acc._rdp, dtype=np.float64) + sk
    expected = rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, total, DELTA)[0]
    # Execute / Assert
    assert acc.rounds == 3
    assert acc.epsilon() == pytest.approx(expected, rel=1e-9)
    # epsilon_after adds one rho-zCDP round without recording it.
    rdp_acc.compose(dp_accounting.ZCDpEvent(0.01))
    after = rdp_privacy_accountant.compute_epsilon(
        RDP_ORDERS, np.asarray(rdp_acc._rdp, dtype=np.float64) + sk, DELTA
    )[0]
    assert acc.epsilon_after(0.01) == pytest.approx(after, rel=1e-9)
    assert acc.rounds == 3
    assert acc.epsilon() == pytest.approx(expected, rel=1e-9)


def test_a_skellam_round_without_survivors_is_refused() -> None:
    acc = DistributedDpAccountant(DELTA)
    with pytest.raises(ValueError, match="survivors >= 1"):
        acc.record_round(NoiseKind.SKELLAM, 5.0, 10.0, 0, 4)
    assert acc.rounds == 0
    assert acc.epsilon() == 0.0
