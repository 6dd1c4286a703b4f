"""`calibrate_noise_multiplier` never answers below the accounted floor z = 0.001.

`DPMean` refuses to account a noise multiplier below `MIN_ACCOUNTED_NOISE_MULTIPLIER`. Before,
the calibration's RDP search started at that floor but failed with dp_accounting's
NoBracketIntervalFoundError ("within 2**30 of initial guess") when the target needed less
noise, and its PLD search started at half the RDP answer, so it could return z below the
floor (0.000985 for epsilon 520,000, one unsampled round). Both now refuse such a target with
a ValueError naming the floor, and every answer is at least the floor.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregators import DPMean
from coordinator.aggregators._dp import MIN_ACCOUNTED_NOISE_MULTIPLIER as DP_FLOOR
from coordinator.privacy import (
    MIN_ACCOUNTED_NOISE_MULTIPLIER,
    PoissonSampling,
    PrivacyAccountant,
    calibrate_noise_multiplier,
)

DELTA = 1e-5
FLOOR = MIN_ACCOUNTED_NOISE_MULTIPLIER


def test_the_calibration_and_dp_mean_share_one_floor() -> None:
    assert FLOOR == DP_FLOOR == 1e-3


def test_pld_refuses_a_target_the_floor_already_meets() -> None:
    # One unsampled round: PLD gives epsilon 504,275 at z = 0.001 (RDP 550,112), so 520,000
    # needs less noise than the floor. Before: z = 0.000985, which DPMean refuses to account.
    with pytest.raises(ValueError, match=r"less noise than z = 0\.001"):
        calibrate_noise_multiplier(520_000, DELTA, 1, PoissonSampling(1.0))


def test_rdp_refuses_a_target_the_floor_already_meets() -> None:
    # Before: dp_accounting's NoBracketIntervalFoundError, which names no floor and is no
    # ValueError.
    with pytest.raises(ValueError, match=r"less noise than z = 0\.001"):
        calibrate_noise_multiplier(1e6, DELTA, 1, PoissonSampling(1.0), "rdp")


def test_a_target_just_above_the_floor_is_calibrated_at_or_above_it() -> None:
    # 500,000 needs a little more noise than z = 0.001 under PLD: the PLD search's lower end
    # (half the RDP answer, 0.00052) is raised to the floor.
    sampling = PoissonSampling(1.0)
    z = calibrate_noise_multiplier(500_000, DELTA, 1, sampling)
    assert z >= FLOOR
    assert PrivacyAccountant(z, sampling, "pld").epsilon(1, DELTA) <= 500_000
    DPMean(z, denominator=10.0, sampling=sampling)  # accepted for accounting


def test_a_pld_answer_meets_the_target_on_its_own_grid() -> None:
    # Found by the property below. The PLD search used its bracket's lower end's (coarser)
    # grid for every z; the answer, accounted on its own grid as DPMean accounts it, read
    # 14,428.34 > 14,427.80. The pessimistic rounding is not monotone in the grid step.
    sampling = PoissonSampling(0.865234375)
    target = 14_427.80252937709
    z = calibrate_noise_multiplier(target, DELTA, 1, sampling, "pld")
    assert PrivacyAccountant(z, sampling, "pld").epsilon(1, DELTA) <= target


# q = 1 (no sampling) keeps RDP's search fast: at q < 1 dp_accounting's fractional orders
# iterate for long near z = 1, where its bracket search starts.
@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(
    log_epsilon=st.floats(math.log(1e4), math.log(3e6)),
    rounds=st.integers(1, 3),
    method=st.sampled_from(["pld", "rdp"]),
)
def test_every_answer_is_at_least_the_floor_and_meets_the_target(
    log_epsilon: float, rounds: int, method: str
) -> None:
    epsilon = math.exp(log_epsilon)
    sampling = PoissonSampling(1.0)
    at_floor = PrivacyAccountant(FLOOR, sampling, method).epsilon(rounds, DELTA)  # type: ignore[arg-type]
    if at_floor <= epsilon:
        with pytest.raises(ValueError, match="less noise than"):
            calibrate_noise_multiplier(epsilon, DELTA, rounds, sampling, method)  # type: ignore[arg-type]
        return
    z = calibrate_noise_multiplier(epsilon, DELTA, rounds, sampling, method)  # type: ignore[arg-type]
    assert z >= FLOOR
    assert PrivacyAccountant(z, sampling, method).epsilon(rounds, DELTA) <= epsilon  # type: ignore[arg-type]
