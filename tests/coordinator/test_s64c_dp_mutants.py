"""`composed_rdp_epsilon`, the coordinator-wide epsilon over tasks (docs/privacy.md, item 7),
pinned to dp_accounting called directly (helper s64c's mutation hunt over
coordinator/privacy.py and coordinator/aggregators/_dp.py): no curve composes to 0 ("epsilon is
0 until a task releases a round"; its `return 0.0` for no curve ran in none of the 61 test
files that name the DP code, and 1.0 there passed test_h213 and test_s22), one curve to its
task's own epsilon.
"""

from __future__ import annotations

import dp_accounting
import pytest

from coordinator.privacy import (
    FixedSizeSampling,
    PrivacyAccountant,
    composed_rdp_epsilon,
    rdp_curve,
)

N, M, Z, DELTA = 1_000, 10, 1.5, 1e-5


def _dp_accounting_epsilon(rounds: int) -> float:
    """docs/privacy.md's fixed-size event, composed by dp_accounting's own RDP accountant:
    SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2)), replace-one."""
    acc = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        N, M, dp_accounting.GaussianDpEvent(Z / 2.0)
    )
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(acc.get_epsilon(DELTA))


def test_no_curve_composes_to_epsilon_zero_and_one_curve_to_its_own_epsilon() -> None:
    # "epsilon is 0 until a task releases a round" (docs/privacy.md, item 7).
    assert composed_rdp_epsilon([], DELTA) == 0.0
    # One task's curve (method "rdp": dp_accounting's curve as it is) composes to that task's
    # own epsilon, as dp_accounting's accountant reports it for three rounds.
    acc = PrivacyAccountant(Z, FixedSizeSampling(N, M), "rdp")
    assert composed_rdp_epsilon([rdp_curve(acc, 3)], DELTA) == pytest.approx(
        _dp_accounting_epsilon(3), rel=1e-12
    )
