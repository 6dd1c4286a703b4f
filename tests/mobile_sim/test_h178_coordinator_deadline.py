"""helper-178, after helper-173's review of mobile_sim: the simulated clock's deadline and
selection timeout follow the coordinator's rules.

- A realistic run without --deadline ended a round that could not fill (a device dropped out)
  when the last *surviving* device reported, which the server cannot know. The coordinator
  always has a deadline (TaskConfig.deadline_s, 60 s by default) and waits to it: a realistic
  run without --deadline now uses that default. Timing mode (no dropouts, every round fills)
  keeps no deadline, so it still trains the same model as --fleet off.
- --deadline inf (or 1e308) was accepted and the run failed after training; --selection-timeout
  0 was accepted though the coordinator refuses it. Both are now refused up front with the
  coordinator's bound, (0, 604800] seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as plume
from coordinator.service.rounds import validate_task
from mobile_sim.clock import COORDINATOR_MAX_S, ClockError, SimClock
from mobile_sim.fleet import SimFleet
from mobile_sim.runner import SimConfig, run_simulation
from protocol.messages import TaskConfig
from tests.coordinator.test_service_support import task_config

# The reviewer's command (200 devices, 10 a round, no over-selection): with tier dropouts,
# rounds 1 to 3 lose a device and cannot fill. Over-selection written out: realistic mode's
# default is now the coordinator's 1.3 (helper-265), whose cohorts fill these rounds.
REALISTIC = SimConfig(
    dataset="digits",
    clients=200,
    per_round=10,
    over_selection=1.0,
    rounds=2,
    local_epochs=1,
    lr=0.2,
    fleet="realistic",
    seed=0,
)
TINY = ["sim", "--dataset", "digits", "--clients", "10", "--per-round", "4", "--rounds", "1"]
TINY += ["--local-epochs", "1", "--no-progress"]


def _coordinator_default_deadline() -> float:
    (field,) = (f for f in dataclasses.fields(TaskConfig) if f.name == "deadline_s")
    return float(field.default)


def test_a_realistic_round_that_cannot_fill_lasts_the_coordinators_default_deadline() -> None:
    # Execute: no deadline given, and the same run with the coordinator's default written out
    default = run_simulation(REALISTIC, progress=False)
    explicit = run_simulation(
        replace(REALISTIC, deadline_s=_coordinator_default_deadline()), progress=False
    )

    # Assert: a round short of its reports (a device dropped) waits to the deadline, 60 s;
    # before, it ended at the last surviving device's report (0.2 s and 0.6 s here)
    assert default.config.deadline_s == 60.0 == _coordinator_default_deadline()
    clocks = [r.measurements["clock"] for r in default.records]
    short = [c for c in clocks if c["kept"] < 10]
    assert short, clocks  # the seed gives at least one such round
    assert all(c["dropped"] > 0 and c["sim_duration_s"] == 60.0 for c in short)
    assert [r.sim_s for r in default.records] == [r.sim_s for r in explicit.records]
    assert [r.reports for r in default.records] == [r.reports for r in explicit.records]


def test_the_default_deadline_is_on_record_in_rounds_json(tmp_path: Path) -> None:
    # Execute
    argv = [*TINY, "--fleet", "realistic", "--clients", "60", "--out", str(tmp_path)]
    assert plume(argv) == 0

    # Assert: rounds.json says which deadline the rounds ran with; the rerun line adds none
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["config"]["deadline_s"] == 60.0
    assert "--deadline" not in doc["command"]


def test_timing_mode_keeps_no_deadline_and_given_ones_are_kept() -> None:
    # Execute
    timing = run_simulation(replace(REALISTIC, fleet="timing", rounds=1), progress=False)
    given = run_simulation(replace(REALISTIC, deadline_s=300.0, rounds=1), progress=False)

    # Assert: timing has no dropouts, so its rounds fill without a deadline (the model is the
    # one --fleet off trains); a --deadline given is used as it is
    assert timing.config.deadline_s is None
    assert timing.records[0].measurements["clock"]["kept"] == 10
    assert given.config.deadline_s == 300.0


def test_the_bound_is_the_coordinators() -> None:
    # The coordinator's validate_task (coordinator/service/rounds.py) has no named constant:
    # this keeps COORDINATOR_MAX_S equal to its bound on deadline_s and selection_timeout_s.
    above = math.nextafter(COORDINATOR_MAX_S, math.inf)
    for name in ("deadline_s", "selection_timeout_s"):
        validate_task(task_config(**{name: COORDINATOR_MAX_S}))
        for bad in (above, 0.0, math.inf):
            with pytest.raises(ValueError, match=name):
                validate_task(task_config(**{name: bad}))


@pytest.mark.parametrize("deadline", [math.inf, 1e308, 604_800.5, 0.0, -1.0, math.nan])
def test_sim_config_refuses_a_deadline_outside_the_coordinators_bound(deadline: float) -> None:
    with pytest.raises(ValueError, match=r"deadline_s must be in \(0, 604800\]"):
        replace(REALISTIC, deadline_s=deadline)


@pytest.mark.parametrize("timeout", [0.0, math.inf, 604_800.5, -2.0, math.nan])
def test_sim_config_refuses_a_selection_timeout_the_coordinator_refuses(timeout: float) -> None:
    with pytest.raises(ValueError, match=r"selection_timeout_s must be in \(0, 604800\]"):
        replace(REALISTIC, selection_timeout_s=timeout)


def test_the_bounds_themselves_are_accepted() -> None:
    cfg = replace(REALISTIC, deadline_s=604_800.0, selection_timeout_s=604_800.0)
    assert (cfg.deadline_s, cfg.selection_timeout_s) == (604_800.0, 604_800.0)
    assert replace(REALISTIC, selection_timeout_s=None).selection_timeout_s is None


@pytest.mark.parametrize("value", ["inf", "1e308", "0", "-3"])
def test_plume_sim_refuses_such_a_deadline_before_training(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: before, inf and 1e308 ran and failed after training (the clock could not
    # advance by an infinite round), or in timing mode ran with an infinite deadline
    code = plume([*TINY, "--fleet", "realistic", "--deadline", value, "--out", str(tmp_path)])

    # Assert: a usage error naming the flag and the coordinator's bound; nothing trained
    captured = capsys.readouterr()
    assert code == 2
    assert "--deadline must be in (0, 604800] simulated seconds" in captured.err
    assert "round" not in captured.out and not (tmp_path / "rounds.json").exists()


@pytest.mark.parametrize("value", ["0", "inf", "700000", "-5"])
def test_plume_sim_refuses_a_selection_timeout_the_coordinator_refuses(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*TINY, "--fleet", "realistic", "--selection-timeout", value, "--out", str(tmp_path)]
    code = plume(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert "--selection-timeout must be in (0, 604800] simulated seconds" in captured.err
    assert "or -1" in captured.err
    assert not (tmp_path / "rounds.json").exists()


@pytest.mark.parametrize("deadline", [math.inf, 1e308])
def test_the_fleet_and_the_clock_refuse_an_unbounded_deadline(deadline: float) -> None:
    # Before: accepted, and a round that could not fill failed in advance() after training
    with pytest.raises(ValueError, match="deadline_s must be > 0 seconds or None"):
        SimFleet(10, deadline_s=deadline)
    clock = SimClock(seed=0)
    prof = SimFleet(3, availability="always").population.profiles(np.arange(3))
    with pytest.raises(ClockError, match="deadline_s must be > 0"):
        clock.plan_round(prof, 0, 0, 1, epochs=1, per_round=1, deadline_s=deadline, round_id=0)


def test_the_help_gives_the_coordinators_numbers_and_where_deadline_applies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    with pytest.raises(SystemExit):
        plume(["sim", "--help"])
    text = " ".join(capsys.readouterr().out.split())

    # Assert: filled in from the coordinator's constants; --deadline is not realistic-only
    assert "round deadline, simulated seconds, in (0, 604800] as the coordinator's" in text
    assert "with --fleet realistic the coordinator's default 60," in text
    assert "--deadline applies in both" in text
    assert "in (0, 604800] (default 900; -1: full cohort only)" in text
