"""s52b: `plume sim --clients 10 --per-round 10 --over-selection 1.3` selected all 10 devices
a round, never 13, and said nothing: the flag changed nothing. A given --over-selection whose
cohort exceeds --clients now gets a note saying how many a round really selects; a cohort that
fits, the default, HTTP and --secure runs get none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.cli import main as plume


def _run(out: Path, *flags: str) -> int:
    # --topk 0.1: no few-kept note (test_s51_cli_few_kept.py)
    argv = ["sim", "--dataset", "digits", "--rounds", "1", "--topk", "0.1", "--no-progress"]
    return plume([*argv, "--out", str(out), *flags])


@pytest.mark.parametrize(
    ("clients", "adds"),
    [("10", "none over --per-round"), ("11", "1 over --per-round")],
)
def test_a_cohort_beyond_the_fleet_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clients: str, adds: str
) -> None:
    # Execute
    code = _run(tmp_path, "--clients", clients, "--per-round", "10", "--over-selection", "1.3")

    # Assert: the note says what the round selected, and the round did select that many
    assert code == 0
    assert capsys.readouterr().err == (
        "plume sim: note: --over-selection 1.3 selects 13 devices a round for --per-round 10, "
        f"but --clients is {clients}: each round selects all {clients} ({adds}); add --clients "
        "for over-selection to matter\n"
    )
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["rounds"][0]["measurements"]["clock"]["selected"] == int(clients)


@pytest.mark.parametrize(
    "flags",
    [
        ["--clients", "13", "--per-round", "10", "--over-selection", "1.3"],  # fits
        ["--clients", "10", "--per-round", "10"],  # no --over-selection
    ],
)
def test_a_cohort_that_fits_is_not_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    # Execute
    code = _run(tmp_path, *flags)

    # Assert
    assert code == 0
    assert capsys.readouterr().err == ""
