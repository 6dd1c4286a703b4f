"""The epsilon DPMean reports in its round measurements, and the round its budget stops at,
recomputed with dp_accounting directly (not through coordinator.privacy) in the two settings
docs/privacy.md describes without such a test: Poisson sampling under PLD and RDP, and
fixed-size sampling where `method=auto` caps each round by the unsampled Gaussian."""

from __future__ import annotations

import functools
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from dp_accounting.rdp import rdp_privacy_accountant

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, DPMean
from coordinator.privacy import FixedSizeSampling, PoissonSampling, PrivacyBudgetExhausted

REL = dp_accounting.NeighboringRelation
DELTA = 1e-5


def _reports(n: int) -> list[ClientUpdate]:
    return [ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.ones(3)), 1.0) for i in range(n)]


def _run(dp: DPMean, reports: int, rounds: int) -> list[dict]:
    proc = dp.create(3)
    state = proc.initialize()
    seen = []
    for _ in range(rounds):
        out = proc.next(state, _reports(reports))
        state = out.state
        seen.append(out.measurements)
    return seen


def _poisson_pld(z: float, q: float, rounds: int) -> float:
    acc = pld.PLDAccountant(REL.ADD_OR_REMOVE_ONE)  # its default grid: z >= 0.5 here
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return float(acc.get_epsilon(DELTA))


def _poisson_rdp(z: float, q: float, rounds: int) -> float:
    acc = rdp.RdpAccountant(neighboring_relation=REL.ADD_OR_REMOVE_ONE)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return float(acc.get_epsilon(DELTA))


@functools.lru_cache
def _one_round_curves(z: float, population: int, sample: int) -> tuple[Any, Any, Any]:
    """(orders, sampled-without-replacement curve, unsampled Gaussian curve) of one round,
    each from a fresh dp_accounting RdpAccountant (replace-one, multiplier z / 2)."""
    sampled = rdp.RdpAccountant(neighboring_relation=REL.REPLACE_ONE)
    sampled.compose(
        dp_accounting.SampledWithoutReplacementDpEvent(
            population, sample, dp_accounting.GaussianDpEvent(z / 2)
        )
    )
    plain = rdp.RdpAccountant(neighboring_relation=REL.REPLACE_ONE)
    plain.compose(dp_accounting.GaussianDpEvent(z / 2))
    return sampled.orders, sampled.rdp, plain.rdp


def _capped_fixed_size(z: float, population: int, sample: int, rounds: int) -> float:
    """The docs' `auto` figure: per order, the smaller of dp_accounting's sampled-without-
    replacement curve and the unsampled Gaussian's (multiplier z / 2, replace-one), times the
    rounds, converted by dp_accounting's compute_epsilon."""
    orders, sampled, plain = _one_round_curves(z, population, sample)
    curve = rounds * np.minimum(sampled, plain)
    return float(rdp_privacy_accountant.compute_epsilon(orders, curve, DELTA)[0])


def _uncapped_fixed_size(z: float, population: int, sample: int, rounds: int) -> float:
    """dp_accounting's own figure: its sampled-without-replacement curve times the rounds."""
    orders, sampled, _ = _one_round_curves(z, population, sample)
    return float(rdp_privacy_accountant.compute_epsilon(orders, rounds * sampled, DELTA)[0])


@pytest.mark.parametrize(("method", "reference"), [("auto", _poisson_pld), ("rdp", _poisson_rdp)])
def test_poisson_epsilon_in_the_measurements_is_dp_accountings(method: str, reference) -> None:
    # "PoissonSampling(q) | PoissonSampledDpEvent(q, GaussianDpEvent(z)) | add/remove | PLD
    # (default, tight) or RDP", as each round's `epsilon` at `delta`
    z, q = 2.0, 0.05
    dp = DPMean(
        z, clip=1.0, sampling=PoissonSampling(q), denominator=10.0, accounting_method=method
    )
    # Execute
    seen = _run(dp, 8, 3)
    # Assert
    for r, m in enumerate(seen, start=1):
        assert m["epsilon"] == pytest.approx(reference(z, q, r), rel=1e-9)
        assert m["delta"] == DELTA and m["rounds"] == r


def test_the_poisson_budget_stops_at_the_round_dp_accounting_gives() -> None:
    # "When one more round would exceed the budget, the round's measurements contain
    # budget_exhausted: True ... DPMean refuses any later round with PrivacyBudgetExhausted"
    z, q = 2.0, 0.1
    budget = (_poisson_pld(z, q, 3) + _poisson_pld(z, q, 4)) / 2  # 3 rounds fit, 4 do not
    dp = DPMean(z, clip=1.0, sampling=PoissonSampling(q), denominator=10.0, epsilon_budget=budget)
    proc = dp.create(3)
    state = proc.initialize()
    flags = []
    # Execute
    for _ in range(3):
        out = proc.next(state, _reports(9))
        state = out.state
        flags.append(out.measurements["budget_exhausted"])
    # Assert
    assert flags == [False, False, True]
    with pytest.raises(PrivacyBudgetExhausted):
        proc.next(state, _reports(9))


def test_auto_caps_each_fixed_size_round_by_the_unsampled_gaussian() -> None:
    # "with method=auto (the default) Plume takes, order by order, the smaller of the two RDP
    # curves for each round, and composes that": N = 110, m = 100, z = 4, where the cap binds
    # (the page: 22.0 after 50 rounds against the sampled bound's 43.2)
    z, population, sample = 4.0, 110, 100
    dp = DPMean(z, clip=1.0, sampling=FixedSizeSampling(population, sample))
    rdp_dp = DPMean(
        z, clip=1.0, sampling=FixedSizeSampling(population, sample), accounting_method="rdp"
    )
    # Execute
    seen = _run(dp, sample, 3)
    uncapped = _run(rdp_dp, sample, 3)
    # Assert: each round's figure is the capped one, and well below dp_accounting's as it is
    for r, (m, u) in enumerate(zip(seen, uncapped, strict=True), start=1):
        capped = _capped_fixed_size(z, population, sample, r)
        assert m["epsilon"] == pytest.approx(capped, rel=1e-9)
        assert u["epsilon"] == pytest.approx(
            _uncapped_fixed_size(z, population, sample, r), rel=1e-9
        )
        assert m["epsilon"] < u["epsilon"]
    assert f"{_capped_fixed_size(z, population, sample, 50):.1f}" == "22.0"


def test_the_capped_budget_stops_at_the_round_dp_accounting_gives() -> None:
    # The stop follows the figure reported: 3 capped rounds fit the budget, 4 do not
    z, population, sample = 4.0, 110, 100
    fits = [_capped_fixed_size(z, population, sample, r) for r in (3, 4)]
    budget = sum(fits) / 2
    dp = DPMean(z, clip=1.0, sampling=FixedSizeSampling(population, sample), epsilon_budget=budget)
    proc = dp.create(3)
    state = proc.initialize()
    flags = []
    # Execute
    for _ in range(3):
        out = proc.next(state, _reports(sample))
        state = out.state
        flags.append(out.measurements["budget_exhausted"])
    # Assert
    assert flags == [False, False, True]
    with pytest.raises(PrivacyBudgetExhausted):
        proc.next(state, _reports(sample))
