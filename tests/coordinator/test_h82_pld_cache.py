"""Per-round PLD epsilon reuses the one-round privacy loss distribution.

`DPMean` asks for epsilon after every round (rounds r + 1 and r + 2), and `max_rounds` and
`calibrate_noise_multiplier` ask for many round counts at one (z, q). Before, every new round
count built the one-round PLD of the Poisson-sampled Gaussian again, point by point in Python
(at z = 0.5, q = 0.5 about a second each time, before the self-composition even started). Now
it is built once per (z, q, grid step) and self-composed to each round count, through the same
dp_accounting calls the PLD accountant makes, so every epsilon is bit for bit the figure the
accountant gives (the grid and the property below compare them with ==).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld
from dp_accounting.pld import privacy_loss_distribution as pld_module
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator import privacy
from coordinator.aggregators import ClientUpdate, DPMean
from coordinator.privacy import PoissonSampling, PrivacyAccountant, pld_value_interval

DELTA = 1e-5


def _accountant_epsilons(
    z: float, q: float, rounds: Sequence[int], delta: float = DELTA
) -> list[float]:
    """What `PrivacyAccountant(z, PoissonSampling(q), "pld").epsilon` reported before the
    cache, for each round count: a fresh dp_accounting PLD accountant per round count, composing
    the self-composed round event. The accountants' one-round PLD build (a pure function of its
    arguments) runs once for all of them here: a repeat of its arguments gets a deep copy of
    the first build's result, so the figures are those of separate builds, bit for bit."""
    build = pld_module.from_gaussian_mechanism
    built: dict[Any, Any] = {}

    def build_once(*args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = build(*args, **kwargs)
        return copy.deepcopy(built[key])

    pld_module.from_gaussian_mechanism = build_once
    try:
        epsilons = []
        for count in rounds:
            acc = pld.PLDAccountant(
                dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
                value_discretization_interval=pld_value_interval(z),
            )
            event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
            acc.compose(dp_accounting.SelfComposedDpEvent(event, count))
            epsilons.append(float(acc.get_epsilon(delta)))
    finally:
        pld_module.from_gaussian_mechanism = build
    return epsilons


def _accountant_epsilon(z: float, q: float, rounds: int, delta: float = DELTA) -> float:
    """`_accountant_epsilons` for one round count."""
    return _accountant_epsilons(z, q, [rounds], delta)[0]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts one-round PLD builds and self-compositions, from empty accounting caches."""
    counts = {"builds": 0, "self_compositions": 0}
    build = pld_module.from_gaussian_mechanism
    self_compose = pld_module.PrivacyLossDistribution.self_compose

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        counts["builds"] += 1
        return build(*args, **kwargs)

    def counting_self_compose(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["self_compositions"] += 1
        return self_compose(self, *args, **kwargs)

    monkeypatch.setattr(pld_module, "from_gaussian_mechanism", counting_build)
    monkeypatch.setattr(pld_module.PrivacyLossDistribution, "self_compose", counting_self_compose)
    privacy.clear_accounting_caches()
    yield counts
    privacy.clear_accounting_caches()


def _reports(n: int, size: int) -> list[ClientUpdate]:
    rng = np.random.default_rng(82)
    return [
        ClientUpdate(
            f"d{i}",
            SparseUpdate(np.arange(size), rng.normal(size=size).astype(np.float32), size),
            1.0,
        )
        for i in range(n)
    ]


def test_a_dp_run_builds_the_round_pld_once(counted: dict[str, int]) -> None:
    # Prepare: the per-round call pattern of DPMean (epsilon at r + 1 and r + 2 every round).
    rounds = 6
    dp = DPMean(2.5, clip=1.0, denominator=4.0, sampling=PoissonSampling(0.2), seed=0)
    proc = dp.create(3)
    state = proc.initialize()
    # Execute
    reported = []
    for _ in range(rounds):
        out = proc.next(state, _reports(4, 3))
        state = out.state
        reported.append(out.measurements["epsilon"])
    # Assert: one build for the whole run (before: one per new round count, 7), one
    # self-composition per round count asked for (1 .. rounds + 1), and the figures unchanged.
    assert counted["builds"] == 1
    assert counted["self_compositions"] == rounds + 1
    assert [reported[0], reported[-1]] == _accountant_epsilons(2.5, 0.2, [1, rounds])


def test_max_rounds_builds_the_round_pld_once(counted: dict[str, int]) -> None:
    acc = PrivacyAccountant(2.0, PoissonSampling(0.05), "pld")
    limit = acc.max_rounds(2.0, DELTA)
    # Assert: the search asked for many round counts (doubling, then bisection) from one build.
    assert counted["self_compositions"] >= 8
    assert counted["builds"] == 1
    at_limit, past_it = _accountant_epsilons(2.0, 0.05, [limit, limit + 1])
    assert at_limit <= 2.0 < past_it


# z = 0.05 is on the coarsened grid, 1.0 and 3.0 on dp_accounting's default one; q = 1 is the
# unsampled Gaussian (dp_accounting builds no separate "add" distribution for it).
@pytest.mark.parametrize("z", [0.05, 1.0, 3.0])
@pytest.mark.parametrize("q", [0.01, 0.3, 1.0])
def test_epsilon_is_the_accountants_to_the_bit(z: float, q: float) -> None:
    acc = PrivacyAccountant(z, PoissonSampling(q), "pld")
    rounds = (1, 40)
    assert [acc.epsilon(n, DELTA) for n in rounds] == _accountant_epsilons(z, q, rounds)


@settings(max_examples=6, deadline=None, derandomize=True, database=None)
@given(
    z=st.floats(2.0, 6.0),
    q=st.floats(1e-3, 1.0),
    rounds=st.integers(1, 60),
    delta=st.sampled_from([1e-3, 1e-5, 1e-7]),
)
def test_epsilon_is_the_accountants_to_the_bit_property(
    z: float, q: float, rounds: int, delta: float
) -> None:
    acc = PrivacyAccountant(z, PoissonSampling(q), "pld")
    assert acc.epsilon(rounds, delta) == _accountant_epsilon(z, q, rounds, delta)
