"""helper-150: the dp entry of AGGREGATOR_HELP (shown by `plume sim --help` and `plume coordinator
create-task --help`) says where Poisson sampling (q=) is taken: in library use only. Before, it
said "Poisson sampling (q=) needs denom= ...; the coordinator service takes population=,sample=
only", which implied that `plume sim` takes q=; the simulator refuses it."""

from __future__ import annotations

import pytest

from coordinator.aggregators import AGGREGATOR_HELP, build_aggregator
from coordinator.service.rounds import validate_task
from mobile_sim.runner import SimConfig

from .test_service_support import task_config

POISSON = "dp:clip=1,z=1,q=0.1,denom=2+fedavg"


def _dp_entry() -> str:
    """The dp stage's entry of the help text, unwrapped to one line."""
    lines = AGGREGATOR_HELP.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("dp:"))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 35):  # the next entry or heading
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


def test_the_help_says_q_is_for_library_use_and_both_clis_take_population_sample() -> None:
    entry = _dp_entry()
    assert "`plume sim` and the coordinator service take population=,sample= only" in entry
    assert "q= (Poisson sampling, with denom= the expected cohort q·N) in library use only" in entry


def test_what_the_help_says_is_what_the_simulator_and_the_service_do() -> None:
    # q= builds in library use (the registry) ...
    build_aggregator(POISSON).create(4)
    # ... and both the simulator and the service refuse it
    with pytest.raises(ValueError, match=r"Poisson sampling \(q=\)"):
        SimConfig(dataset="digits", clients=20, per_round=2, rounds=1, aggregator=POISSON)
    with pytest.raises(ValueError, match="q= accounts Poisson sampling"):
        validate_task(task_config(aggregator=POISSON))
    # population=,sample= is taken by both
    fixed = "dp:clip=1,z=1,population=20,sample=2+fedavg"
    SimConfig(dataset="digits", clients=20, per_round=2, rounds=1, aggregator=fixed)
    validate_task(task_config(aggregator=fixed, clients_per_round=2))
