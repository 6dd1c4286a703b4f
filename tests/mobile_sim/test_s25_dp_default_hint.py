"""A realistic `plume sim` whose dp `sample=` is below the cohort that realistic mode's default
over-selection (the coordinator's 1.3, e3048cf) selects says where the cohort comes from and
how to select per_round: before, it said only that the engine selects 13, which a user who never
set an over-selection could not place (helper-269's review)."""

from __future__ import annotations

import pytest

from mobile_sim.runner import SimConfig

DP = "dp:clip=1,z=1,population=100,sample=10"


def test_the_refusal_names_realistic_modes_default() -> None:
    with pytest.raises(ValueError) as info:
        SimConfig(fleet="realistic", clients=100, per_round=10, aggregator=DP, dataset="digits")
    assert "selects 13 (over-selection included)" in str(info.value)
    assert "--fleet realistic takes the coordinator's over-selection 1.3" in str(info.value)
    assert "pass --over-selection 1" in str(info.value)


def test_a_given_over_selection_gets_no_such_hint() -> None:
    with pytest.raises(ValueError) as info:
        SimConfig(
            fleet="realistic",
            clients=100,
            per_round=10,
            over_selection=1.3,
            aggregator=DP,
            dataset="digits",
        )
    assert "selects 13" in str(info.value) and "realistic takes" not in str(info.value)
