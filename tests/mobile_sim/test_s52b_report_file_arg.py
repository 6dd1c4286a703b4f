"""s52b, a new user's walk through `plume sim report`. Handed a file instead of a folder
(the run's own `rounds.json`, a plot, `ledger.csv`), it said "X is not a folder (no
rounds.json)", which is wrong of `runs/x/rounds.json` itself and names no fix. It now says the
path is a file and, when the file sits in a run's folder, which folder to give (for a
`--compare-dense` run's `compressed/rounds.json`, the `--out` folder above it). And a folder
holding a run's rounds.csv but no rounds.json (what a second Ctrl-C while the files were written
leaves: rounds.json is written last) said only "no rounds.json in X", as of a folder of no run;
it now names the CSV and says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.cli import main as plume

_ROUNDS = [{"round": 1, "accuracy": 0.5, "bytes_up": 400, "bytes_down": 9000, "wall_s": 1.0}]
_TAIL = "; RUN_DIR must be the --out folder of a `plume sim` run\n"


def _run(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "rounds.json").write_text(json.dumps({"rounds": _ROUNDS}))
    (folder / "ledger.csv").write_text("round_id\n")


@pytest.mark.parametrize("name", ["rounds.json", "ledger.csv"])
def test_a_file_of_a_run_names_the_runs_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    # Prepare
    _run(tmp_path / "x")
    given = tmp_path / "x" / name

    # Execute
    code = plume(["sim", "report", str(given)])

    # Assert: one usage line naming the folder to give; nothing written beside it
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"plume sim: error: {given} is a file, not a folder: give the run's folder, "
        f"`plume sim report {tmp_path / 'x'}`" + _TAIL
    )
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["ledger.csv", "rounds.json"]


def test_a_compare_dense_runs_file_names_its_out_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the layout --compare-dense writes
    _run(tmp_path / "m" / "compressed")
    _run(tmp_path / "m" / "dense")
    given = tmp_path / "m" / "compressed" / "rounds.json"

    # Execute
    code = plume(["sim", "report", str(given)])

    # Assert
    assert code == 2
    assert capsys.readouterr().err == (
        f"plume sim: error: {given} is a file, not a folder: give the run's folder, "
        f"`plume sim report {tmp_path / 'm'}`" + _TAIL
    )


def test_a_file_elsewhere_is_said_to_be_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a file whose folder holds no run
    given = tmp_path / "notes.txt"
    given.write_text("not a run")

    # Execute
    code = plume(["sim", "report", str(given)])

    # Assert: no folder to suggest, and not "(no rounds.json)"
    assert code == 2
    assert capsys.readouterr().err == (f"plume sim: error: {given} is a file, not a folder" + _TAIL)


@pytest.mark.parametrize("where", [".", "compressed"])
def test_a_folder_with_rounds_csv_and_no_rounds_json_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    # Prepare: what a second Ctrl-C while a run's files were written leaves (rounds.json is
    # written last), in a single run's folder or a --compare-dense run's compressed/
    csv = tmp_path / "x" / where / "rounds.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("round,accuracy\n1,0.5\n")

    # Execute
    code = plume(["sim", "report", str(tmp_path / "x")])

    # Assert: the CSV is named, with why there is no rounds.json; nothing written
    assert code == 2
    assert capsys.readouterr().err == (
        f"plume sim: error: no rounds.json in {tmp_path / 'x'} or its subfolders (nor in a "
        f"subfolder's compressed, secure, dense/), only {tmp_path / 'x' / where / 'rounds.csv'}"
        ": a run writes rounds.json last, and one stopped while writing its files has none; "
        "`plume sim report` needs it (rerun the run)" + _TAIL
    )
    assert [p.name for p in csv.parent.iterdir()] == ["rounds.csv"]
