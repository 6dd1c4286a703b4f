"""Realistic mode takes the coordinator's default over-selection, as it takes its default
deadline (s25/clock finding 5). Before, `plume sim --fleet realistic` ran with 1.0 while a
coordinator task over-selects 1.3 unless told otherwise (TaskConfig.over_selection), so with
--per-round 10 and a fleet dropout mean of 8.2 % over half the rounds could not fill and
waited the whole 60 s deadline. An explicit --over-selection still wins; rounds.json's config
records the value and, when it was the default, `over_selection_defaulted: true`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.clock import COORDINATOR_OVER_SELECTION
from mobile_sim.runner import SimConfig, run_simulation
from protocol.messages import TaskConfig

REALISTIC = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=200,
    per_round=10,
    rounds=1,
    local_epochs=1,
    lr=0.2,
    partition="iid",
    fleet="realistic",
)
ARGV = ["sim", "--dataset", "digits", "--clients", "200", "--per-round", "10", "--rounds", "1"]
ARGV += ["--local-epochs", "1", "--partition", "iid", "--no-progress"]


def _task_default() -> float:
    (field,) = (f for f in dataclasses.fields(TaskConfig) if f.name == "over_selection")
    return float(field.default)


def test_realistic_mode_defaults_to_the_coordinators_over_selection() -> None:
    # Execute
    given = replace(REALISTIC, over_selection=1.0)
    timing = SimConfig(dataset="digits", clients=200, per_round=10, fleet="timing")

    # Assert: the task's default, marked; a value given (even 1.0) is kept and not marked;
    # the other fleets keep 1.0 and record the config they did before
    assert REALISTIC.over_selection == COORDINATOR_OVER_SELECTION == _task_default() == 1.3
    assert REALISTIC.over_selection_defaulted
    assert REALISTIC.engine_config().cohort_size == 13
    assert REALISTIC.as_dict()["over_selection_defaulted"] is True
    assert given.over_selection == 1.0 and not given.over_selection_defaulted
    assert "over_selection_defaulted" not in given.as_dict()
    assert timing.over_selection == 1.0 and not timing.over_selection_defaulted
    assert "over_selection_defaulted" not in timing.as_dict()
    # the deadline's default keeps the mark (run_simulation records that config)
    filled = REALISTIC.with_coordinator_deadline()
    assert filled.deadline_defaulted and filled.over_selection_defaulted


def test_a_realistic_run_selects_the_over_selected_cohort() -> None:
    # Execute
    res = run_simulation(REALISTIC, progress=False)

    # Assert: 13 selected for 10 reports, as a coordinator task with default settings
    assert res.config.over_selection_defaulted
    assert [r.measurements["clock"]["selected"] for r in res.records] == [13]


@pytest.mark.parametrize(
    ("extra", "expected", "marked"),
    [
        ([], 1.3, True),
        (["--over-selection", "1"], 1.0, False),
        (["--over-selection", "1.5"], 1.5, False),
    ],
)
def test_plume_sim_records_the_over_selection_it_ran_with(
    tmp_path: Path, extra: list[str], expected: float, marked: bool
) -> None:
    # Execute
    assert plume([*ARGV, "--fleet", "realistic", *extra, "--out", str(tmp_path)]) == 0

    # Assert: the config says it; the rerun command keeps a value given and adds no default
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["config"]["over_selection"] == expected
    assert doc["config"].get("over_selection_defaulted", False) is marked
    assert ("--over-selection" in doc["command"]) is bool(extra)


def test_the_timing_fleet_keeps_no_over_selection(tmp_path: Path) -> None:
    # Execute
    assert plume([*ARGV, "--out", str(tmp_path)]) == 0

    # Assert: as before
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["config"]["over_selection"] == 1.0
    assert "over_selection_defaulted" not in doc["config"]
    assert doc["rounds"][0]["measurements"]["clock"]["selected"] == 10


def test_the_help_gives_the_coordinators_default(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit):
        plume(["sim", "--help"])
    text = " ".join(capsys.readouterr().out.split())

    # Assert
    assert (
        f"(default: 1.0, none; with --fleet realistic the coordinator's default, "
        f"{_task_default():g}, as a task has)" in text
    )
