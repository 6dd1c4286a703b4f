"""s53b: `plume sim report RUN_DIR` on a run still running said "no rounds.json in RUN_DIR ...;
RUN_DIR must be the --out folder of a `plume sim` run", as of a wrong folder: a run writes its
files only when it ends. The run now keeps a record of itself for its --out folder (outside
it, `in_progress_path`: its pid, run and rounds finished so far), removed however it ends; the
report says the run is still in progress and how far it got, names a run that was killed
(SIGKILL: the record outlives it), and leaves a sweep's running setting out with a line. A run stopped by Ctrl-C is reported
as before. Rounds are observed from inside the run (a patched encoder), never by wall clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

import mobile_sim.runner as runner
from coordinator.cli import main as plume
from mobile_sim.report_extra import RunInProgress, in_progress_path, read_run_dir

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "3", "--local-epochs", "1", "--topk", "0.1", "--no-progress",
]  # fmt: skip
_ROUNDS = [{"round": 1, "accuracy": 0.5, "bytes_up": 400, "bytes_down": 9000, "wall_s": 1.0}]


@pytest.fixture(autouse=True)
def _own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records go to this test's own temporary folder (as TMPDIR would put them)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def _marker(folder: Path, pid: int, **extra: Any) -> None:
    doc = {
        "out": str(folder.resolve()),
        "pid": pid,
        "started_at": "2026-12-05T23:00:00Z",
        "runs": ["compressed", "dense"],
        "run": "compressed",
        "rounds": 20,
        "done": 3,
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    in_progress_path(folder).parent.mkdir(parents=True, exist_ok=True)
    in_progress_path(folder).write_text(json.dumps(doc))


def _run_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"config": {"dataset": "digits"}, "rounds": _ROUNDS}
    (folder / "rounds.json").write_text(json.dumps(doc))
    (folder / "ledger.csv").write_text("round_id\n")


def _gone_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_run_keeps_the_file_while_it_runs_and_removes_it_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: look at --out from inside round 3 (rounds 1 and 2 finished)
    out = tmp_path / "run"
    seen: dict[str, Any] = {}
    real = runner.encode_reports
    calls = {"n": 0}

    def encode(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            seen["doc"] = json.loads(in_progress_path(out).read_text())
            seen["out"] = sorted(p.name for p in out.iterdir())
            try:
                read_run_dir(out)
            except RunInProgress as exc:
                seen["error"] = str(exc)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "encode_reports", encode)

    # Execute
    code = plume([*TINY, "--out", str(out)])
    capsys.readouterr()

    # Assert: the file said how far the run was, the report refused it as in progress, and
    # the run's end removed it
    assert code == 0
    doc = seen["doc"]
    assert (doc["out"], doc["pid"]) == (str(out.resolve()), os.getpid())
    assert seen["out"] == []  # nothing of it in --out
    assert (doc["runs"], doc["run"], doc["rounds"], doc["done"]) == (
        ["compressed"],
        "compressed",
        3,
        2,
    )
    assert seen["error"].startswith(f"{out} is the --out folder of a run still in progress")
    assert "2 of 3 rounds of its compressed run finished so far" in seen["error"]
    assert not in_progress_path(out).exists()
    assert plume(["sim", "report", str(out)]) == 0


def test_a_ctrl_c_run_removes_the_file_and_is_reported_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: Ctrl-C in round 3 of 3
    out = tmp_path / "run"
    real = runner.encode_reports
    calls = {"n": 0}

    def encode(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "encode_reports", encode)

    # Execute
    code = plume([*TINY, "--out", str(out)])
    capsys.readouterr()
    report = plume(["sim", "report", str(out)])
    captured = capsys.readouterr()

    # Assert
    assert code == 130
    assert not in_progress_path(out).exists()
    assert report == 0
    assert captured.out.rstrip().splitlines()[-1] == (
        "compressed: interrupted after 2 of 3 rounds; its figures stop at round 2, "
        "the last that finished"
    )


def test_report_of_a_running_folder_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: this process stands for the live run
    out = tmp_path / "run"
    _marker(out, os.getpid())

    # Execute
    code = plume(["sim", "report", str(out)])
    sub = plume(["sim", "report", str(out / "compressed")])  # its --compare-dense folder
    err = capsys.readouterr().err

    # Assert: exit 1, and no "RUN_DIR must be the --out folder" (it is one); nothing written
    line = (
        f"plume sim: error: {out} is the --out folder of a run still in progress (started "
        f"2026-12-05T23:00:00Z, pid {os.getpid()}): 3 of 20 rounds of its compressed run (run "
        "1 of 2) finished so far; a run writes its files (rounds.json, rounds.csv, ledger.csv, "
        "the plots) when it ends, then `plume sim report` reads them\n"
    )
    assert (code, sub) == (1, 1)
    assert err == line + line
    assert list(out.iterdir()) == []


def test_a_killed_run_is_named_not_taken_for_a_wrong_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: SIGKILL leaves the file naming a process that is gone, and no run files
    out = tmp_path / "run"
    pid = _gone_pid()
    _marker(out, pid, runs=["compressed"], done=0)

    # Execute
    code = plume(["sim", "report", str(out)])
    err = capsys.readouterr().err

    # Assert
    assert code == 1
    assert err == (
        f"plume sim: error: no rounds.json in {out}: the run into {out} (started "
        f"2026-12-05T23:00:00Z, pid {pid}) was killed before it wrote its files (SIGKILL "
        "or out of memory?), with 0 of 20 rounds of its compressed run finished; rerun it\n"
    )


def test_a_killed_run_beside_files_is_a_note_under_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a --compare-dense run killed in its dense run, its compressed run written
    out = tmp_path / "run"
    pid = _gone_pid()
    _run_files(out / "compressed")
    _marker(out, pid, run="dense", done=5)

    # Execute
    code = plume(["sim", "report", str(out)])
    lines = capsys.readouterr().out.rstrip().splitlines()

    # Assert
    assert code == 0
    assert lines[-1] == (
        f"the run into {out} (started 2026-12-05T23:00:00Z, pid {pid}) was killed before it "
        "wrote its files (SIGKILL or out of memory?), with 5 of 20 rounds of its dense run "
        "(run 2 of 2) finished; the files read here were written before it"
    )


def test_a_sweeps_running_setting_is_left_out_with_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: k1 finished, k2 running (with an earlier run's files it will replace)
    sweep = tmp_path / "sweep"
    _run_files(sweep / "k1")
    _run_files(sweep / "k2")
    _marker(sweep / "k2", os.getpid(), runs=["compressed"])

    # Execute
    code = plume(["sim", "report", str(sweep)])
    out = capsys.readouterr().out
    only_running = plume(["sim", "report", str(sweep / "k2")])
    capsys.readouterr()

    # Assert: k1 alone is drawn; the note says why k2 is not
    assert code == 0
    assert read_run_dir(sweep).runs == [("k1", _ROUNDS)]
    note = f"k2: left out, {sweep / 'k2'} is the --out folder of a run still in progress"
    assert out.rstrip().splitlines()[-1].startswith(note)
    assert only_running == 1


def test_a_sweep_whose_every_setting_runs_is_in_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    sweep = tmp_path / "sweep"
    _marker(sweep / "k1", os.getpid(), runs=["compressed"])

    # Execute
    code = plume(["sim", "report", str(sweep)])
    err = capsys.readouterr().err

    # Assert
    assert code == 1
    assert err.startswith(
        f"plume sim: error: {sweep / 'k1'} is the --out folder of a run still in progress"
    )
