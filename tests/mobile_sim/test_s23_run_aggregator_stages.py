"""SimConfig.run_aggregator gives the in-process dp stage its seed= (docs/simulator.md): it
split the spec at every '+', so an exponent sign in a dp parameter ("clip=1e+0") cut the stage
in two and the seed went into the middle of a number; and it looked for seed= case-sensitively
while the grammar's keys are not (eb78464), so "SEED=5" got a second seed=, a repeated key."""

from __future__ import annotations

import pytest

from coordinator.aggregators import build_aggregator
from coordinator.aggregators._dp import find_dp
from mobile_sim.runner import SimConfig, dp_seed_for


def test_an_exponent_in_a_dp_parameter_keeps_the_stage_whole() -> None:
    cfg = SimConfig(aggregator="dp:clip=1e+0,z=1+fedavg")
    assert cfg.run_aggregator == f"dp:clip=1e+0,z=1,seed={dp_seed_for(cfg.seed)}+fedavg"
    dp = find_dp(build_aggregator(cfg.run_aggregator))
    assert dp is not None and dp.clip == 1.0 and dp.seed == dp_seed_for(cfg.seed)


@pytest.mark.parametrize("key", ["seed", "SEED", "Seed"])
def test_a_seed_given_in_any_case_is_kept(key: str) -> None:
    cfg = SimConfig(aggregator=f"dp:clip=1,z=1,{key}=5+fedavg")
    assert cfg.run_aggregator == cfg.aggregator
    assert cfg.dp_seed == 5
