"""PLD accounting (Poisson sampling, `q=`) at a small noise multiplier finishes.

Before, dp_accounting's PLD grid kept its default step (1e-4 on the privacy loss) at every z:
the loss spans about 1/z^2, so the grid dp_accounting builds point by point grew as 1/z^2
(one epsilon at z = 0.05 took 30 s here, and more than 100 s at smaller z). Now the step is
coarsened below z = 0.5 so the grid is no larger than at 0.5; from 0.5 up it is unchanged.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import dp_accounting
import pytest
from dp_accounting import pld

from coordinator.privacy import (
    PLD_FINE_Z,
    PLD_VALUE_INTERVAL,
    PoissonSampling,
    PrivacyAccountant,
    pld_value_interval,
)


@contextmanager
def _within(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the block takes longer than `seconds`: a bound 20 to 100
    times the time the fixed accountant takes, so a loaded machine does not trip it."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(("z", "q", "rounds"), [(0.01, 0.01, 3), (1e-3, 0.1, 2)])
def test_pld_epsilon_at_a_small_z_finishes(z: float, q: float, rounds: int) -> None:
    # Before: dozens of millions of grid points (z = 0.01) to billions (z = 0.001), built one
    # by one in Python; the first case timed out here.
    with _within(20):
        eps = PrivacyAccountant(z, PoissonSampling(q), "pld").epsilon(rounds, 1e-5)
    rdp = PrivacyAccountant(z, PoissonSampling(q), "rdp").epsilon(rounds, 1e-5)
    assert 0 < eps <= rdp  # still an upper bound no larger than RDP's


def test_from_half_up_the_grid_is_dp_accountings_default() -> None:
    assert pld_value_interval(PLD_FINE_Z) == PLD_VALUE_INTERVAL == 1e-4
    assert pld_value_interval(3.0) == PLD_VALUE_INTERVAL
    # (tests/coordinator/test_dp_audit.py compares z = 1.1 and 2 the same way.)
    event = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(0.8))
    direct = pld.PLDAccountant()
    direct.compose(event, 4)
    ours = PrivacyAccountant(0.8, PoissonSampling(0.01), "pld").epsilon(4, 1e-5)
    assert ours == direct.get_epsilon(1e-5)


def test_below_half_the_grid_is_coarser_and_epsilon_barely_moves() -> None:
    # z = 0.45: step 1.23e-4 instead of 1e-4. dp_accounting rounds the loss pessimistically,
    # so the coarser grid gives an epsilon at least the default's, and here within 1e-6.
    z = 0.45
    assert pld_value_interval(z) == pytest.approx(1e-4 * (0.5 / z) ** 2, rel=1e-12)
    event = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(z))
    fine = pld.PLDAccountant()
    fine.compose(event, 1)
    eps_fine = fine.get_epsilon(1e-5)
    eps = PrivacyAccountant(z, PoissonSampling(0.01), "pld").epsilon(1, 1e-5)
    assert eps_fine <= eps <= eps_fine * (1 + 1e-6)
