"""Fixed-size (replace-one) accounting is never above the unsampled Gaussian mechanism.

dp_accounting's sampled-without-replacement RDP (Wang, Balle and Kasiviswanathan 2019, Thm. 27)
is exactly the Gaussian at m = N but far looser just below it: at N = 110, m = 100 it read
epsilon 43.2 where the Gaussian of sensitivity 2C, with no amplification at all, gives 22.0.
Sampling cannot cost privacy (the sampled release is a mixture, over the cohorts, of pairs that
are equal or replace-one neighbours, and Renyi divergence is jointly quasi-convex), so both
curves bound every round and their per-order minimum does too. The references here are built
from dp_accounting's own events, not from coordinator.privacy.
"""

from __future__ import annotations

from collections.abc import Iterator

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from dp_accounting.rdp import rdp_privacy_accountant

from coordinator.privacy import (
    FixedSizeSampling,
    Method,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    clear_accounting_caches,
)

DELTA = 1e-5
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


def _curve(event: dp_accounting.DpEvent) -> tuple[np.ndarray, np.ndarray]:
    acc = rdp.RdpAccountant(neighboring_relation=REPLACE_ONE)
    acc.compose(event)
    return np.asarray(acc.orders, dtype=np.float64), np.asarray(acc.rdp, dtype=np.float64)


def _reference(population: int, sample: int, z: float, rounds: int) -> tuple[float, float, float]:
    """(sampled bound, unsampled Gaussian, per-order minimum of the two) epsilons, from
    dp_accounting's events: SampledWithoutReplacement(N, m, Gaussian(z/2)) and Gaussian(z/2)."""
    orders, wor = _curve(
        dp_accounting.SampledWithoutReplacementDpEvent(
            population, sample, dp_accounting.GaussianDpEvent(z / 2)
        )
    )
    orders_g, gauss = _curve(dp_accounting.GaussianDpEvent(z / 2))
    assert np.array_equal(orders, orders_g)

    def eps(curve: np.ndarray) -> float:
        return float(rdp_privacy_accountant.compute_epsilon(orders, rounds * curve, DELTA)[0])

    return eps(wor), eps(gauss), eps(np.minimum(wor, gauss))


@pytest.mark.parametrize(
    ("population", "sample", "z", "rounds"),
    [(110, 100, 4.0, 50), (200, 100, 1.0, 100), (150, 100, 4.0, 50)],
)
def test_fixed_size_epsilon_is_never_above_the_unsampled_gaussian(
    population: int, sample: int, z: float, rounds: int
) -> None:
    # Prepare: the sampled bound alone is above the Gaussian's in these settings
    wor, gauss, both = _reference(population, sample, z, rounds)
    assert wor > both  # the case this test is about
    # Execute
    ours = PrivacyAccountant(z, FixedSizeSampling(population, sample)).epsilon(rounds, DELTA)
    # Assert: before, Plume reported `wor` (43.2 against 22.0 at N = 110, m = 100)
    assert ours <= gauss
    assert ours == both


@pytest.mark.parametrize(
    ("population", "sample", "z", "rounds"),
    [(1400, 140, 2.0, 34), (1400, 140, 2.12, 40), (10_000, 100, 1.0, 100), (50, 50, 1.3, 7)],
)
def test_where_sampling_helps_the_figures_are_unchanged(
    population: int, sample: int, z: float, rounds: int
) -> None:
    # The documented and benchmarked settings: the minimum never binds there (or N = m, where
    # the two curves are the same), so every published epsilon stays as it was.
    wor, _gauss, both = _reference(population, sample, z, rounds)
    ours = PrivacyAccountant(z, FixedSizeSampling(population, sample)).epsilon(rounds, DELTA)
    assert ours == wor == both


@pytest.mark.slow  # about 8 s: dp_accounting's own search computes the sampled bound ~25 times
def test_calibration_uses_the_tighter_bound() -> None:
    # Prepare
    clear_accounting_caches()
    sampling = FixedSizeSampling(110, 100)
    target, rounds = 8.0, 20
    # Execute
    z = calibrate_noise_multiplier(target, DELTA, rounds, sampling)
    # Assert: enough noise by the independent reference, not much more than the least that
    # is enough, and less than the sampled bound alone accepts (before, calibration searched
    # that bound only and answered a z about 1.5 times this one)
    wor, _gauss, both = _reference(110, 100, z, rounds)
    assert both <= target < wor
    assert _reference(110, 100, z * (1 - 1e-3), rounds)[2] > target
    assert PrivacyAccountant(z, sampling).epsilon(rounds, DELTA) <= target


def test_method_rdp_keeps_dp_accountings_sampled_bound() -> None:
    # "rdp" is dp_accounting's RdpAccountant as it is; "auto" (DPMean's default) is capped.
    sampling = FixedSizeSampling(110, 100)
    wor, _gauss, both = _reference(110, 100, 4.0, 50)
    assert PrivacyAccountant(4.0, sampling, "rdp").epsilon(50, DELTA) == wor
    assert PrivacyAccountant(4.0, sampling, "auto").epsilon(50, DELTA) == both < wor


# A dozen RDP orders instead of dp_accounting's 156: every curve is then ~13 times cheaper
# (the sampled-without-replacement bound costs O(alpha^2) per integer order), so the whole
# calibration takes a fraction of a second. The arithmetic is still dp_accounting's, on both
# sides of every comparison; only the order grid is coarser (and its epsilons looser).
_FEW_ORDERS = [1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0]


@pytest.fixture
def few_orders(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    clear_accounting_caches()
    monkeypatch.setattr(rdp_privacy_accountant, "DEFAULT_RDP_ORDERS", _FEW_ORDERS)
    yield
    # The caches hold curves on the coarse grid: no later test may read them.
    clear_accounting_caches()


@pytest.mark.usefixtures("few_orders")
def test_the_capped_calibration_branch_meets_its_contract_fast() -> None:
    # Prepare: the setting of the slow test above, on a coarse order grid
    sampling = FixedSizeSampling(110, 100)
    target, rounds = 8.0, 20
    assert len(rdp.RdpAccountant(neighboring_relation=REPLACE_ONE).orders) == len(_FEW_ORDERS)

    # Execute
    z = calibrate_noise_multiplier(target, DELTA, rounds, sampling)

    # Assert: the branch ran (dp_accounting's own answer, on the sampled bound alone, is more
    # than the cap needs: the returned z misses the target uncapped), and its contract holds:
    # enough noise as "auto" accounts it, and not 0.2% more than the least that is enough.
    def eps(noise: float, method: Method = "auto") -> float:
        return PrivacyAccountant(noise, sampling, method).epsilon(rounds, DELTA)

    assert eps(z, "rdp") > target
    assert eps(z) <= target < eps(z * (1 - 2e-3))
    assert eps(z) == _reference(110, 100, z, rounds)[2]  # the capped curve, independently
