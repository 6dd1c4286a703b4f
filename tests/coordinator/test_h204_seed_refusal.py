"""`seed_refusal`: a fixed dp noise seed together with accounting makes the reported epsilon
meaningless (helper-193's F4). The service took such a task with a log warning only; this is
the refusal it calls at task creation once helper-204's rounds.py change is applied. Fails on
the code before (no `seed_refusal`)."""

from __future__ import annotations

import pytest

from coordinator.aggregators import build_aggregator
from coordinator.aggregators._dp import delta_refusal, find_dp, seed_refusal


def _dp(spec: str) -> object:
    return find_dp(build_aggregator(spec))


@pytest.mark.parametrize(
    ("spec", "accounting"),
    [
        ("dp:clip=1,z=1,population=100,sample=10,seed=3+fedavg", "population=100,sample=10"),
        ("dp:clip=1,z=1,population=100,sample=10,eps=8,seed=0+fedavg", "population=100,sample=10"),
        ("dp:clip=1,z=1,q=0.1,denom=10,seed=3+fedavg", "q=0.1"),
        ("avgm:0.9+dp:clip=1,z=1,population=50,sample=5,seed=1+fedavg", "population=50,sample=5"),
    ],
)
def test_a_seed_with_accounting_is_refused_by_name(spec: str, accounting: str) -> None:
    why = seed_refusal(_dp(spec))  # type: ignore[arg-type]
    assert why is not None
    assert why.startswith("dp: seed=") and f"with accounting ({accounting})" in why
    assert "means nothing" in why and "drop seed=" in why


@pytest.mark.parametrize(
    "spec",
    [
        "dp:clip=1,z=1,population=100,sample=10+fedavg",  # OS noise: fine
        "dp:clip=1,z=0.5,seed=7+fedavg",  # no epsilon claimed
        "fedavg",
    ],
)
def test_no_refusal_without_a_seed_or_without_accounting(spec: str) -> None:
    assert seed_refusal(_dp(spec)) is None  # type: ignore[arg-type]
    assert seed_refusal(None) is None


def test_the_simulators_check_still_takes_a_seeded_accounted_stage() -> None:
    # `plume sim` and the benchmarks run seeded accounted dp on purpose (repeatable runs):
    # delta_refusal, which the simulator calls, does not refuse a seed.
    assert delta_refusal(_dp("dp:clip=1,z=1,population=100,sample=10,seed=0+fedavg")) is None  # type: ignore[arg-type]
