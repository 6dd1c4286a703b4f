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

import dp_accounting
import dp_accounting.pld
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from coordinator.privacy import PoissonSampling, calibrate_noise_multiplier

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
