"""A realistic run without --deadline runs with the coordinator's default (60 s, 8eef265); the
abandoned-rounds warning then blamed "--deadline 60 s", a flag the user never passed. The run's
config now records that the deadline was defaulted (rounds.json `config.deadline_defaulted`,
left out when the user gave one, as in every rounds.json before it), and the warning says
"before the coordinator's default 60 s deadline". A deadline given keeps the old wording."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from coordinator.cli import main as plume
from mobile_sim.report import abandoned_warning
from mobile_sim.runner import SimConfig, run_simulation

# 200 devices, 10 a round, all 10 needed: with tier dropouts (seed 0) round 1 loses devices
# and is abandoned by the engine with 8 of 10 reports. No over-selection, written out since
# realistic mode's default is now the coordinator's 1.3 (helper-265).
REALISTIC = SimConfig(
    dataset="digits",
    clients=200,
    per_round=10,
    over_selection=1.0,
    min_reports=10,
    rounds=1,
    local_epochs=1,
    lr=0.2,
    fleet="realistic",
    seed=0,
)
ARGV = ["sim", "--dataset", "digits", "--clients", "200", "--per-round", "10"]
ARGV += ["--min-reports", "10", "--rounds", "1", "--local-epochs", "1", "--lr", "0.2"]
ARGV += ["--fleet", "realistic", "--over-selection", "1", "--no-progress"]


def _abandoned(cfg: object, reports: int) -> NS:
    record = NS(
        round=1,
        committed=False,
        reports=reports,
        measurements={"abandoned": f"{reports} reports < min_reports 10"},
    )
    return NS(records=[record], config=cfg, dp_pool=lambda: None)


def test_the_config_says_whether_the_deadline_was_defaulted() -> None:
    # Execute
    defaulted = REALISTIC.with_coordinator_deadline()
    given = replace(REALISTIC, deadline_s=60.0).with_coordinator_deadline()
    timing = replace(REALISTIC, fleet="timing").with_coordinator_deadline()
    # Assert: only the filled-in default is marked, and only then is the key recorded
    assert defaulted.deadline_s == given.deadline_s == 60.0 and timing.deadline_s is None
    assert defaulted.deadline_defaulted
    assert not given.deadline_defaulted and not timing.deadline_defaulted
    assert defaulted.as_dict()["deadline_defaulted"] is True
    assert "deadline_defaulted" not in given.as_dict()
    assert "deadline_defaulted" not in timing.as_dict()
    assert "deadline_defaulted" not in REALISTIC.as_dict()
    # a rounds.json config read back into SimConfig's fields (as bench scripts do) still builds
    known = {f.name for f in fields(SimConfig)}
    back = SimConfig(**{k: v for k, v in defaulted.as_dict().items() if k in known})
    assert back.deadline_s == 60.0 and not back.deadline_defaulted


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        (0, "no report before the coordinator's default 60 s deadline"),
        (8, "fewer than --min-reports 10 reports before the coordinator's default 60 s deadline"),
    ],
)
def test_the_warning_names_the_coordinators_default(reports: int, expected: str) -> None:
    cfg = REALISTIC.with_coordinator_deadline()
    assert abandoned_warning(_abandoned(cfg, reports)) == (  # type: ignore[arg-type]
        f"warning: 1 of 1 rounds were abandoned ({expected}); the model never changed"
    )
    # ... and a deadline given, even the same 60 s, keeps naming --deadline
    given = replace(REALISTIC, deadline_s=60.0).with_coordinator_deadline()
    assert "before --deadline 60 s)" in str(abandoned_warning(_abandoned(given, reports)))  # type: ignore[arg-type]


def test_a_realistic_run_without_a_deadline_blames_the_coordinators_default() -> None:
    # Execute
    result = run_simulation(REALISTIC, progress=False)
    # Assert: the round was the engine's to abandon (a device dropped out, 60 s waited)
    (record,) = result.records
    assert not record.committed and 0 < record.reports < 10
    assert result.config.deadline_defaulted
    assert abandoned_warning(result) == (
        "warning: 1 of 1 rounds were abandoned (fewer than --min-reports 10 reports before "
        "the coordinator's default 60 s deadline); the model never changed"
    )


def test_plume_sim_records_it_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: the run without --deadline, and with --deadline 60
    assert plume([*ARGV, "--out", str(tmp_path / "default")]) == 0
    default_out = capsys.readouterr().out
    assert plume([*ARGV, "--deadline", "60", "--out", str(tmp_path / "given")]) == 0
    given_out = capsys.readouterr().out
    # Assert: rounds.json says whether the deadline was defaulted (the key only then)
    default_cfg = json.loads((tmp_path / "default" / "rounds.json").read_text())["config"]
    given_cfg = json.loads((tmp_path / "given" / "rounds.json").read_text())["config"]
    assert default_cfg["deadline_s"] == given_cfg["deadline_s"] == 60.0
    assert default_cfg["deadline_defaulted"] is True and "deadline_defaulted" not in given_cfg
    # ... and the warning line names the default, or the flag given
    warned = [line for line in default_out.splitlines() if "abandoned" in line]
    assert len(warned) == 1 and "before the coordinator's default 60 s deadline)" in warned[0]
    warned = [line for line in given_out.splitlines() if "abandoned" in line]
    assert len(warned) == 1 and "before --deadline 60 s)" in warned[0]
