"""Per-round RDP epsilon reuses the one-round RDP curve.

RDP composes by adding curves: `rounds` identical rounds are `rounds` times one round's curve.
Before, every new round count composed a fresh dp_accounting RdpAccountant, computing the
sampled Gaussian's RDP at every order again (for fixed-size sampling, the path `plume sim` and
the service account with, a few tenths of a second per round count here). Now one round's
curve is computed once per (z, sampling) and scaled, exactly as the accountant scales it
(zeros + rounds · curve), so every epsilon is the accountant's to the bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from compression import SparseUpdate
from coordinator import privacy
from coordinator.aggregators import ClientUpdate, DPMean
from coordinator.privacy import (
    FixedSizeSampling,
    PoissonSampling,
    PrivacyAccountant,
    Sampling,
)

DELTA = 1e-5


def _accountant_epsilon(z: float, sampling: Sampling, rounds: int, delta: float = DELTA) -> float:
    """What `PrivacyAccountant(z, sampling, "rdp").epsilon` reported before the cache."""
    fixed = isinstance(sampling, FixedSizeSampling)
    acc = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
        if fixed
        else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    acc.compose(PrivacyAccountant(z, sampling, "rdp").dp_event(rounds))
    return float(acc.get_epsilon(delta))


@pytest.fixture
def compositions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts RdpAccountant compositions, from empty accounting caches."""
    count = [0]
    compose = rdp.RdpAccountant.compose

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return compose(self, *args, **kwargs)

    monkeypatch.setattr(rdp.RdpAccountant, "compose", counting)
    privacy.clear_accounting_caches()
    yield count
    privacy.clear_accounting_caches()


def test_a_fixed_size_dp_run_computes_one_rdp_curve(compositions: list[int]) -> None:
    # Prepare: the per-round call pattern of DPMean under fixed-size sampling (auto: RDP).
    rounds = 5
    sampling = FixedSizeSampling(1400, 140)
    proc = DPMean(2.12, clip=1.0, denominator=140.0, sampling=sampling, seed=0).create(2)
    state = proc.initialize()
    update = SparseUpdate(np.arange(2), np.ones(2, dtype=np.float32), 2)
    # Execute
    reported = []
    for _ in range(rounds):
        out = proc.next(state, [ClientUpdate(f"d{i}", update, 1.0) for i in range(140)])
        state = out.state
        reported.append(out.measurements["epsilon"])
    # Assert: one composition for the run (before: one per round count asked for, 6).
    assert compositions[0] == 1
    assert reported == [_accountant_epsilon(2.12, sampling, r) for r in range(1, rounds + 1)]


@pytest.mark.parametrize(
    "sampling",
    [
        FixedSizeSampling(1400, 140),
        FixedSizeSampling(100, 100),
        PoissonSampling(0.01),
        PoissonSampling(1.0),
    ],
)
@pytest.mark.parametrize("z", [0.005, 0.7, 3.46])
def test_epsilon_is_the_accountants_to_the_bit(sampling: Sampling, z: float) -> None:
    acc = PrivacyAccountant(z, sampling, "rdp")
    for rounds, delta in ((1, 1e-5), (40, 1e-5), (40, 1e-9), (10_000, 1e-5)):
        assert acc.epsilon(rounds, delta) == _accountant_epsilon(z, sampling, rounds, delta)
