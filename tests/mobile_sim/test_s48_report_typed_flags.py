"""Stop 48, helper-407's review of the simulator: `plume sim report RUN_DIR` refused a run
flag only when its value differed from the flag's default, so `--rounds 20`, `--dataset mnist`
or `--out runs/latest` passed and were ignored while `--out runs/other` was refused. It now
refuses every run flag typed, whatever its value (abbreviated, or as --flag=value, too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.cli import main as plume


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    rounds = [{"round": 1, "accuracy": 0.5, "bytes_up": 400, "bytes_down": 9000, "wall_s": 1.0}]
    (tmp_path / "rounds.json").write_text(json.dumps({"rounds": rounds}))
    return tmp_path


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--rounds", "20"], "--rounds"),
        (["--dataset", "mnist"], "--dataset"),
        (["--out", "runs/latest"], "--out"),
        (["--out=runs/latest"], "--out"),
        (["--roun", "20"], "--rounds"),  # argparse's abbreviation
        (["--selection-timeout", "-1"], "--selection-timeout"),  # a value that starts with -
        (["--no-progress"], "--no-progress"),
        (["--seed", "0", "--rounds", "20"], "--rounds, --seed"),  # in the help's order
    ],
)
def test_a_run_flag_at_its_default_value_is_refused_too(
    run_dir: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    # Execute
    code = plume(["sim", "report", str(run_dir), *flags])

    # Assert: one usage line naming the flags typed, and nothing redrawn
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"plume sim: error: `plume sim report RUN_DIR` takes no run flags (got {named}): it "
        "redraws the plots and rewrites rounds.csv from RUN_DIR's rounds.json alone\n"
    )
    assert not list(run_dir.glob("*.png"))


def test_a_report_without_run_flags_still_runs(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plume(["sim", "report", str(run_dir)]) == 0
    assert capsys.readouterr().err == ""
    assert len(list(run_dir.glob("*.png"))) == 3
