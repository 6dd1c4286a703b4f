"""coordinator/privacy.py's first 345 lines (validation, events, the accountant, the RDP
curves) and `calibrate_noise_multiplier`'s half-z PLD branch, pinned to dp_accounting called
here directly or to hand-derivable figures (helper s66c's mutation pass: each test kills a
mutant the other privacy tests let through).

The half-z branch: under PLD the search first tries half dp_accounting's RDP answer, and it
returned that z as it was whenever PLD already met the target there. That happens for small q
and epsilon, where RDP is loose (q = 0.01, epsilon 0.03, one round: PLD reads 0.016 at half the
RDP answer): the answer added up to several times the noise needed. It now bisects below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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
    clear_accounting_caches,
    composed_rdp_epsilon,
    pld_value_interval,
    rdp_curve,
    rdp_orders,
)

DELTA = 1e-5
ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def _poisson_event(q: float, z: float) -> dp_accounting.DpEvent:
    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))


def _pld_epsilon(q: float, z: float) -> float:
    """One Poisson round's epsilon from dp_accounting's PLD accountant, on the grid step the
    docs give for z (1e-4, coarsened by (0.5 / z)^2 below z = 0.5)."""
    step = 1e-4 if z >= 0.5 else 1e-4 * (0.5 / z) ** 2
    acc = dp_accounting.pld.PLDAccountant(
        neighboring_relation=ADD_REMOVE, value_discretization_interval=step
    )
    acc.compose(_poisson_event(q, z))
    return float(acc.get_epsilon(DELTA))


def _rdp_calibration(q: float, epsilon: float) -> float:
    """dp_accounting's own RDP calibration of one Poisson round (the PLD search's upper end)."""
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: rdp_privacy_accountant.RdpAccountant(neighboring_relation=ADD_REMOVE),
            lambda z: _poisson_event(q, z),
            epsilon,
            DELTA,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        )
    )


def _pld_accountant_epsilon(q: float, z: float, rounds: int) -> float:
    """`rounds` Poisson rounds at z >= 0.5 (dp_accounting's default grid), composed by
    dp_accounting's PLD accountant as docs/privacy.md's table gives the event."""
    acc = dp_accounting.pld.PLDAccountant(neighboring_relation=ADD_REMOVE)
    acc.compose(dp_accounting.SelfComposedDpEvent(_poisson_event(q, z), rounds))
    return float(acc.get_epsilon(DELTA))


_ACC = PrivacyAccountant(1.0, PoissonSampling(0.01))
_ENTRIES: dict[str, Callable[[Any], object]] = {
    "dp_event": _ACC.dp_event,
    "epsilon": lambda rounds: _ACC.epsilon(rounds, DELTA),
    "rdp_curve": lambda rounds: rdp_curve(_ACC, rounds),
}


@pytest.mark.parametrize("entry", sorted(_ENTRIES))
@pytest.mark.parametrize(
    ("rounds", "message"),
    [
        (True, "rounds must be a whole number, got True"),
        (2.5, "rounds must be a whole number, got 2.5"),
        # A numpy float is named as a number (2.5), not as numpy writes it (np.float64(2.5)).
        (np.float64(2.5), "rounds must be a whole number, got 2.5"),
        (-1, "rounds must be >= 0, got -1"),
    ],
)
def test_every_entry_refuses_a_round_count_that_is_not_a_whole_number(
    entry: str, rounds: object, message: str
) -> None:
    # A bool is an int to Python, and 2.5 rounds would be accounted as int(2.5) = 2; -1
    # Poisson rounds reached dp_accounting's self_compose and its own message.
    with pytest.raises(ValueError) as caught:
        _ENTRIES[entry](rounds)
    assert str(caught.value) == message


def test_a_nan_sampling_probability_is_refused() -> None:
    # NaN fails every comparison, so only "not 0 < q <= 1" refuses it.
    with pytest.raises(ValueError) as caught:
        PoissonSampling(float("nan"))
    assert str(caught.value) == "sampling probability must be in (0, 1], got nan"


@pytest.mark.parametrize("method", ["auto", "pld", "rdp"])
def test_zero_rounds_release_nothing_and_cost_epsilon_zero(method: str) -> None:
    # No round released: nothing to account (dp_accounting's PLD cannot self-compose 0 times).
    acc = PrivacyAccountant(1.0, PoissonSampling(0.01), method)  # type: ignore[arg-type]
    assert acc.epsilon(0, DELTA) == 0.0
    assert acc.epsilon(np.int64(0), DELTA) == 0.0  # type: ignore[arg-type]


@pytest.mark.parametrize("rounds", [np.uint8(3), np.int16(3), np.int64(3)])
def test_a_numpy_round_count_is_accounted_as_that_many_rounds(rounds: np.integer) -> None:
    # Prepare: nothing cached, so the numpy count itself reaches the accounting (a cached
    # entry for the int 3 would answer for it: equal keys).
    clear_accounting_caches()
    acc = PrivacyAccountant(1.0, PoissonSampling(0.01))
    # Execute
    eps = acc.epsilon(rounds, DELTA)  # type: ignore[arg-type]
    # Assert: dp_accounting's PLD accountant over three rounds (a uint8 count passed on as it
    # is overflows in the PLD's grid arithmetic: OverflowError, -101 out of bounds for uint8).
    assert eps == pytest.approx(_pld_accountant_epsilon(0.01, 1.0, 3), rel=1e-12)


@pytest.mark.parametrize("method", ["auto", "rdp"])
def test_a_poisson_tasks_rdp_curve_is_dp_accountings_as_it_is(method: str) -> None:
    # Prepare: dp_accounting's RDP accountant over five Poisson rounds, add/remove. A Poisson
    # task is PLD-accounted under "auto", but the coordinator-wide figure adds its RDP curve
    # (docs/privacy.md, item 7); "auto" caps only a fixed-size round's curve.
    q, z, rounds = 0.01, 1.5, 5
    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=ADD_REMOVE)
    acc.compose(dp_accounting.SelfComposedDpEvent(_poisson_event(q, z), rounds))
    # Execute
    curve = rdp_curve(PrivacyAccountant(z, PoissonSampling(q), method), rounds)  # type: ignore[arg-type]
    # Assert
    assert composed_rdp_epsilon([curve], DELTA) == pytest.approx(acc.get_epsilon(DELTA), rel=1e-12)


def test_rdp_orders_are_dp_accountings_default_grid_read_only() -> None:
    # Every curve the coordinator adds is on this grid; the docstring promises it read-only.
    orders = rdp_orders()
    assert orders.dtype == np.float64
    assert orders.tolist() == [float(a) for a in rdp_privacy_accountant.DEFAULT_RDP_ORDERS]
    assert not orders.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        orders[0] = 2.0


def test_an_unknown_method_is_named_as_written() -> None:
    with pytest.raises(ValueError) as caught:
        PrivacyAccountant(1.0, PoissonSampling(0.5), "ldp")  # type: ignore[arg-type]
    assert str(caught.value) == "unknown accounting method 'ldp'; use auto, pld or rdp"


@pytest.mark.parametrize("z", [0.5, 0.5 + 1e-12, 0.503, 1.0, 40.0])
def test_from_z_half_up_the_pld_grid_is_dp_accountings_default(z: float) -> None:
    # docs/privacy.md: dp_accounting's step (1e-4) from z = 0.5 up.
    assert pld_value_interval(z) == 1e-4


def test_just_above_z_half_epsilon_is_dp_accountings_on_its_default_grid() -> None:
    # So the same epsilon as dp_accounting's PLD accountant with its default grid.
    eps = PrivacyAccountant(0.503, PoissonSampling(0.01), "pld").epsilon(2, DELTA)
    assert eps == pytest.approx(_pld_accountant_epsilon(0.01, 0.503, 2), rel=1e-12)


@pytest.mark.parametrize("z", [0.5 - 1e-9, 0.25, 0.05])
def test_below_z_half_the_pld_grid_is_coarsened_by_the_square(z: float) -> None:
    assert pld_value_interval(z) == pytest.approx(1e-4 * (0.5 / z) ** 2, rel=1e-15)


def test_max_rounds_doubles_then_bisects_to_dp_accountings_last_round_within_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: fixed-size sampling under "rdp" (dp_accounting's accountant as it is), budget 4:
    # some hundreds of rounds. The answer from dp_accounting directly: the last round count
    # whose epsilon is within the budget.
    n, m, z, budget = 1_000, 10, 1.5, 4.0
    replace_one = dp_accounting.NeighboringRelation.REPLACE_ONE

    def direct(rounds: int) -> float:
        acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=replace_one)
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            n, m, dp_accounting.GaussianDpEvent(z / 2)
        )
        acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
        return float(acc.get_epsilon(DELTA))

    acc = PrivacyAccountant(z, FixedSizeSampling(n, m), "rdp")
    calls: list[int] = []
    epsilon = PrivacyAccountant.epsilon

    def counted(self: PrivacyAccountant, rounds: int, delta: float) -> float:
        calls.append(rounds)
        return epsilon(self, rounds, delta)

    monkeypatch.setattr(PrivacyAccountant, "epsilon", counted)
    # Execute
    got = acc.max_rounds(budget, DELTA)
    # Assert: dp_accounting's last round within the budget, found in a logarithmic number of
    # epsilons (doubling, then bisection: at most 2 log2(answer) + 3), not round by round.
    assert direct(got) <= budget < direct(got + 1)
    assert got > 100
    assert len(calls) <= 2 * math.log2(got) + 3


# Large z keeps each PLD quick. Before the fix: z = 2.631 (epsilon 0.0164) for 0.03 and
# z = 3.729 (0.0090) for 0.01, half the RDP answer each time.
@pytest.mark.parametrize("epsilon", [0.03, 0.01])
def test_pld_calibration_below_half_the_rdp_answer_is_bisected_to_the_target(
    epsilon: float,
) -> None:
    # Prepare: q = 0.01, one round. PLD meets the target at half the RDP answer already, so
    # the search takes the half-z branch.
    q = 0.01
    z_rdp = _rdp_calibration(q, epsilon)
    assert _pld_epsilon(q, z_rdp / 2) <= epsilon
    # Execute
    z = calibrate_noise_multiplier(epsilon, DELTA, 1, PoissonSampling(q))
    # Assert: enough noise for the target, and 0.2% less is not (the search's tolerance is
    # 0.001 of a bracket's upper end, below 2z): the answer is the least noise PLD needs.
    assert z < z_rdp / 2
    assert _pld_epsilon(q, z) <= epsilon < _pld_epsilon(q, z * (1 - 2e-3))
