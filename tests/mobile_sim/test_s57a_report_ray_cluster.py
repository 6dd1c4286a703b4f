"""`plume sim report RUN_DIR` says the Ray cluster each run joined (rounds.json's top-level
`ray_cluster`), one note line per run that has it: ``LABEL: ray cluster: ADDRESS (from
RAY_ADDRESS)``. A run without it prints nothing new; a `ray_cluster` that is not an object of
two non-empty strings, "address" and "from", is said to be malformed (its value is not shown)
and the report goes on. Control characters in it are escaped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim.report_extra import interrupted_notes, read_run_dir

_ROW = {
    "round": 1,
    "bytes_up": 10,
    "bytes_down": 20,
    "dense_up": 40,
    "wall_s": 0.1,
    "sim_s": 0.2,
    "wait_s": 0.0,
    "accuracy": 0.5,
}
JOINED = {"address": "10.0.0.5:6379", "from": "RAY_ADDRESS"}
LINE = "compressed: ray cluster: 10.0.0.5:6379 (from RAY_ADDRESS)"
MALFORMED = "compressed: ray_cluster in rounds.json is malformed, not shown"


def _write(folder: Path, *, interrupted: bool = False, **top: Any) -> Path:
    """A run's rounds.json as `report.write_run` lays it out (two rounds), plus `top`."""
    doc: dict[str, Any] = {
        "config": {"dataset": "digits", "model": "digits_mlp"},
        "summary": {"label": "compressed", "rounds": 2, "interrupted": interrupted},
        "rounds": [_ROW, {**_ROW, "round": 2}],
    }
    doc.update(top)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rounds.json").write_text(json.dumps(doc), encoding="utf-8")
    return folder


def test_the_report_prints_the_cluster_with_the_notes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run = _write(tmp_path / "run", ray_cluster=JOINED)
    # Execute
    code = plume(["sim", "report", str(run)])
    out, err = capsys.readouterr()
    # Assert: one line, after the comparison table, as the other notes
    assert code == 0, err
    lines = out.splitlines()
    assert lines.count(LINE) == 1
    assert lines.index(LINE) > next(i for i, x in enumerate(lines) if x.startswith("run  "))
    assert read_run_dir(run).notes == [LINE]
    assert read_run_dir(run).ray_clusters == [LINE]


def test_a_given_address_says_so(tmp_path: Path) -> None:
    run = _write(tmp_path, ray_cluster={"address": "ray://head:10001", "from": "ray_address"})
    assert read_run_dir(run).notes == [
        "compressed: ray cluster: ray://head:10001 (from ray_address)"
    ]


def test_a_run_without_it_prints_nothing_new(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare / Execute: the same run's report without the key, then with it
    run = _write(tmp_path)
    assert plume(["sim", "report", str(run)]) == 0
    without = capsys.readouterr().out
    assert read_run_dir(run).notes == [] and read_run_dir(run).ray_clusters == []
    _write(tmp_path, ray_cluster=JOINED)
    assert plume(["sim", "report", str(run)]) == 0
    with_it = capsys.readouterr().out
    # Assert: the one line is all that differs
    assert "ray" not in without
    assert with_it == without + LINE + "\n"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "10.0.0.5:6379",
        ["10.0.0.5:6379", "RAY_ADDRESS"],
        {},
        {"address": "10.0.0.5:6379"},
        {"address": 6379, "from": "RAY_ADDRESS"},
        {"address": "10.0.0.5:6379", "from": None},
        {"address": "", "from": "RAY_ADDRESS"},
        {"address": "10.0.0.5:6379", "from": ""},
        {**JOINED, "token": "t0ken-s57a"},
        {"address": {"host": "10.0.0.5"}, "from": "RAY_ADDRESS"},
    ],
    ids=[
        "null", "a string", "a list", "empty", "no from", "a number", "from null",
        "empty address", "empty from", "a third key", "an object",
    ],
)  # fmt: skip
def test_a_malformed_value_is_one_note(tmp_path: Path, value: object) -> None:
    run = _write(tmp_path, ray_cluster=value)
    assert read_run_dir(run).notes == [MALFORMED]
    assert read_run_dir(run).ray_clusters == [MALFORMED]


def test_the_report_goes_on_past_a_malformed_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run = _write(tmp_path, ray_cluster={**JOINED, "token": "t0ken-s57a"})
    # Execute
    code = plume(["sim", "report", str(run)])
    out, err = capsys.readouterr()
    # Assert: the plots and table as ever, one note; the value itself is not shown
    assert code == 0, err
    assert err == ""
    assert out.splitlines().count(MALFORMED) == 1
    assert "ray cluster:" not in out and "t0ken" not in out
    assert (run / "bytes_per_round.png").exists()


def test_control_characters_are_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An address that would clear the screen and forge a line of its own
    forged = "10.0.0.5:6379\x1b[2J\nplume sim: all good\r"
    run = _write(tmp_path, ray_cluster={"address": forged, "from": "RAY_\u202eADDRESS"})
    assert plume(["sim", "report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    assert "plume sim: all good" not in out.splitlines()
    expected = (
        "compressed: ray cluster: 10.0.0.5:6379\\x1b[2J\\nplume sim: all good\\r "
        "(from RAY_\\u202eADDRESS)"
    )
    assert out.splitlines().count(expected) == 1


def test_each_run_of_a_sweep_says_its_own(tmp_path: Path) -> None:
    # Prepare: three settings of a sweep, one on a cluster, one private, one damaged
    _write(tmp_path / "k0.01", ray_cluster=JOINED)
    _write(tmp_path / "k0.1")
    _write(tmp_path / "k1", ray_cluster=[])
    # Execute / Assert: in folder order, each labelled by its folder
    assert read_run_dir(tmp_path).notes == [
        "k0.01: ray cluster: 10.0.0.5:6379 (from RAY_ADDRESS)",
        "k1: ray_cluster in rounds.json is malformed, not shown",
    ]


def test_interrupted_notes_leave_the_cluster_out(tmp_path: Path) -> None:
    run = _write(tmp_path, interrupted=True, ray_cluster=JOINED)
    notes = read_run_dir(run).notes
    assert len(notes) == 2 and notes[1] == LINE
    assert interrupted_notes(run) == [notes[0]]
    assert notes[0].startswith("compressed: interrupted after 2 rounds")
