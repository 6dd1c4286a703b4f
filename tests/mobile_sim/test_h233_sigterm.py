"""SIGTERM (timeout, Slurm, docker stop, CI) stops `plume sim` as Ctrl-C does: the finished
rounds are written (summary.interrupted true), one line names the signal, the exit status is
143, and pool workers are shut down. Before, the process died at once with no message and an
empty --out folder (helper-222's finding 2). The signal is sent once a round's table row is
on stdout, never at a wall-clock time."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobile_sim import _cli

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    """The pids whose parent is `pid` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _run_and_term(
    out: Path, *flags: str, rows: int = 1, deadline: float = 240.0
) -> tuple[int, str, str, set[int]]:
    """Start a long digits run, SIGTERM it once `rows` table rows are printed; its exit status,
    stdout, stderr and the child processes it had when signalled."""
    cmd = [
        sys.executable,
        "-m",
        "coordinator.cli",
        "sim",
        "--dataset",
        "digits",
        "--clients",
        "10",
        "--per-round",
        "3",
        "--rounds",
        "500",
        "--threads",
        "1",
        "--seed",
        "3",
        "--topk",  # 241 values an upload: no few-kept note (test_s51_cli_few_kept.py)
        "0.1",
        "--out",
        str(out),
        *flags,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    end = time.monotonic() + deadline
    try:
        while sum(line[:6].strip().isdigit() for line in lines) < rows:
            left = end - time.monotonic()
            assert left > 0, f"no round row in {deadline:.0f} s: {lines}"
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                line = proc.stdout.readline()
                assert line, f"exited early ({proc.wait()}): {lines} {proc.stderr.read()}"
                lines.append(line)
        children = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=deadline)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines) + stdout, stderr, children


@pytest.mark.timeout(300)
def test_sigterm_writes_the_finished_rounds_and_exits_143(tmp_path: Path) -> None:
    # Execute
    out = tmp_path / "int"
    status, stdout, stderr, _ = _run_and_term(out)

    # Assert: as Ctrl-C, with the signal named and its status (before: -15, nothing written)
    assert status == 143, (status, stderr)
    assert "Traceback" not in stderr, stderr
    data = json.loads((out / "rounds.json").read_text())
    done = len(data["rounds"])
    assert done >= 1
    assert data["summary"]["interrupted"] is True
    assert (out / "rounds.csv").exists() and (out / "ledger.csv").exists()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"plume sim: stopped by SIGTERM after {done} of 500 rounds; ")
    assert f"wrote its {done} finished round" in lines[0]


@pytest.mark.slow  # starting a pool's worker takes 10-30 s on a loaded machine
@pytest.mark.timeout(400)
def test_sigterm_shuts_the_pool_workers_down(tmp_path: Path) -> None:
    # Execute
    out = tmp_path / "pool"
    status, _, stderr, children = _run_and_term(
        out, "--backend", "pool", "--workers", "1", deadline=300.0
    )

    # Assert: the rounds are written and no worker outlives the run
    assert status == 143, (status, stderr)
    assert json.loads((out / "rounds.json").read_text())["summary"]["interrupted"] is True
    assert children, "the pool had no worker process"
    end = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < end:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in children), children


def test_the_previous_sigterm_handler_is_put_back() -> None:
    # Prepare: a handler of the calling program
    def mine(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        # Execute: while inside, SIGTERM raises KeyboardInterrupt and is remembered
        with pytest.raises(KeyboardInterrupt), _cli._sigterm_interrupts():
            assert signal.getsignal(signal.SIGTERM) is _cli._on_sigterm
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)  # the handler runs at the next bytecode; never reached
        assert _cli._stopped_by == "SIGTERM"
        assert _cli._stop_status() == 143
        assert _cli._stop_text("interrupted after 1 of 3 rounds") == (
            "stopped by SIGTERM after 1 of 3 rounds"
        )

        # Assert: the program's handler is back
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_ctrl_c_keeps_its_text_and_status() -> None:
    with _cli._sigterm_interrupts():
        pass
    assert _cli._stopped_by is None
    assert _cli._stop_status() == 130
    assert _cli._stop_text("interrupted after 1 of 3 rounds") == "interrupted after 1 of 3 rounds"
