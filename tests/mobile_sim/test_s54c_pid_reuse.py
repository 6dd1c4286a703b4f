"""s54c: a `plume sim` run's in-progress record (`in_progress_path`) named only its pid, so a
record a SIGKILLed run left behind read as a run still in progress once an unrelated process
got that pid. The record now keeps the process's start time too (`pid_start`, Linux:
/proc/PID/stat field 22) and a record whose pid now belongs to a process that started at
another time is a killed run. A record without `pid_start` (written before) reads as before.
This process stands for the process that reused the pid: its pid is live, its start time is
not the record's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim._cli import _InProgress
from mobile_sim.report_extra import in_progress_path, process_start

pytestmark = pytest.mark.skipif(
    process_start(os.getpid()) is None, reason="no /proc/PID/stat on this system"
)


@pytest.fixture(autouse=True)
def _own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records go to this test's own temporary folder (as TMPDIR would put them)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def _record(folder: Path, **extra: Any) -> None:
    doc = {
        "out": str(folder.resolve()),
        "pid": os.getpid(),
        "started_at": "2026-12-06T01:00:00Z",
        "runs": ["compressed"],
        "run": "compressed",
        "rounds": 20,
        "done": 4,
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    in_progress_path(folder).parent.mkdir(parents=True, exist_ok=True)
    in_progress_path(folder).write_text(json.dumps(doc))


def test_process_start_reads_field_22_of_a_command_name_with_spaces_and_parens(
    tmp_path: Path,
) -> None:
    # Prepare: a child whose command name holds ") (" (field 2 of its stat line)
    exe = tmp_path / "a) (b c"
    exe.symlink_to(sys.executable)
    child = subprocess.Popen(
        [str(exe), "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        # Execute
        got = process_start(child.pid)
        stat = Path(f"/proc/{child.pid}/stat").read_text()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()

    # Assert: the 20th field after the command name's closing parenthesis (field 22)
    assert "a) (b c" in stat
    assert got == int(stat.rsplit(")", 1)[1].split()[19])
    assert process_start(child.pid) is None  # reaped: gone


def test_a_record_whose_pid_was_reused_is_a_killed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the record's pid is live, but that process started at another time
    out = tmp_path / "run"
    start = process_start(os.getpid())
    assert start is not None
    _record(out, pid_start=start + 1)

    # Execute
    code = plume(["sim", "report", str(out)])
    err = capsys.readouterr().err

    # Assert: not "still in progress"
    assert code == 1
    assert err == (
        f"plume sim: error: no rounds.json in {out}: the run into {out} (started "
        f"2026-12-06T01:00:00Z, pid {os.getpid()}) was killed before it wrote its files "
        "(SIGKILL or out of memory?), with 4 of 20 rounds of its compressed run finished; "
        "rerun it\n"
    )


@pytest.mark.parametrize("kind", ["own start", "old record", "start not a number"])
def test_a_record_with_its_own_start_or_none_is_still_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    # Prepare: the record's start is this process's, or it has none (an old record: the pid
    # alone decides, as before), or one that is no start time (as if it had none)
    out = tmp_path / "run"
    extra = {
        "own start": {"pid_start": process_start(os.getpid())},
        "old record": {},
        "start not a number": {"pid_start": "12"},
    }[kind]
    _record(out, **extra)

    # Execute
    code = plume(["sim", "report", str(out)])
    err = capsys.readouterr().err

    # Assert
    assert code == 1
    assert err.startswith(f"plume sim: error: {out} is the --out folder of a run still in ")


def test_the_run_records_its_start_time(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "run"
    out.mkdir()

    # Execute
    record = _InProgress(out, [("compressed", type("C", (), {"rounds": 5})())])
    record.start("compressed", 5)
    doc = json.loads(in_progress_path(out).read_text())
    record.remove()

    # Assert
    assert doc["pid"] == os.getpid()
    assert doc["pid_start"] == process_start(os.getpid())
    assert not in_progress_path(out).exists()
