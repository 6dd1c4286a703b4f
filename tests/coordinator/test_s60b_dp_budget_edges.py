"""DPMean's epsilon budget at its edges: a round whose epsilon equals the budget is released
(docs/privacy.md: a round that would *exceed* the budget is refused), the next is refused,
`budget_exhausted` turns on exactly at the last round that fits, and a refused round spends
nothing: the state it was given still releases the same round once the budget allows it.

The epsilons are recomputed here with dp_accounting directly, not read from the accountant
under test."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, DPMean
from coordinator.privacy import PoissonSampling, PrivacyBudgetExhausted

Z, Q, DELTA = 1.1, 0.05, 1e-5


def _rdp_epsilon(rounds: int) -> float:
    """Epsilon of `rounds` Poisson(q)-sampled Gaussian(z) rounds under dp_accounting's RDP."""
    acc = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    event = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(Z))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(acc.get_epsilon(DELTA))


def _reports(n: int, size: int) -> list[ClientUpdate]:
    return [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.full(size, 0.1, np.float32)), 1.0)
        for i in range(n)
    ]


def _dp(budget: float) -> DPMean:
    return DPMean(
        Z,
        clip=1.0,
        sampling=PoissonSampling(Q),
        denominator=2.0,
        delta=DELTA,
        epsilon_budget=budget,
        accounting_method="rdp",
        seed=3,
    )


def test_a_round_whose_epsilon_equals_the_budget_is_released_and_the_next_refused() -> None:
    # Prepare: a budget of exactly the third round's epsilon (no slack at all).
    budget = _rdp_epsilon(3)
    proc = _dp(budget).create(4)
    state = proc.initialize()
    ups = _reports(2, 4)
    eps, flags = [], []
    # Execute
    for _ in range(3):
        out = proc.next(state, ups)
        state = out.state
        eps.append(out.measurements["epsilon"])
        flags.append(out.measurements["budget_exhausted"])
    # Assert: round 3 reaches the budget exactly and is released; only then is it exhausted.
    assert eps == [_rdp_epsilon(1), _rdp_epsilon(2), budget]
    assert flags == [False, False, True]
    assert out.measurements["rounds"] == 3
    with pytest.raises(PrivacyBudgetExhausted, match="round 4"):
        proc.next(state, ups)


def test_budget_exhausted_turns_on_only_when_the_next_round_would_exceed_it() -> None:
    # Prepare: the budget is the second round's epsilon; the flag must be off after round 1
    # (round 2 still fits exactly) and on after round 2.
    proc = _dp(_rdp_epsilon(2)).create(4)
    ups = _reports(2, 4)
    # Execute
    first = proc.next(proc.initialize(), ups)
    second = proc.next(first.state, ups)
    # Assert
    assert first.measurements["budget_exhausted"] is False
    assert second.measurements["budget_exhausted"] is True


def test_a_refused_round_spends_nothing() -> None:
    # Prepare: a budget below the first round's epsilon refuses round 1.
    ups = _reports(2, 4)
    tight = _dp(_rdp_epsilon(1) * (1 - 1e-9)).create(4)
    state = tight.initialize()
    # Execute: refused twice from the same state; the state is unchanged (round 0).
    for _ in range(2):
        with pytest.raises(PrivacyBudgetExhausted, match="round 1 "):
            tight.next(state, ups)
    # Assert: the same state under a budget that fits releases round 1 at round 1's epsilon,
    # with the noise of round 1 (seeded: noise = f(seed, round)).
    loose = _dp(_rdp_epsilon(1)).create(4)
    out = loose.next(state, ups)
    assert out.measurements["rounds"] == 1
    assert out.measurements["epsilon"] == _rdp_epsilon(1)
    fresh = loose.next(loose.initialize(), ups)
    assert np.array_equal(out.result, fresh.result)
