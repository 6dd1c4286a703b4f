"""A simulator worker's failure ends `plume sim` in one `plume sim: error: ...` line with status 1
(helper-191: `--backend pool|ray --job-timeout 0.001` ended in a 24-line traceback, and an actor's
exception arrived as a raw RayTaskError); PLUME_DEBUG=1 still shows the traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator import cli
from mobile_sim.backends.process_pool import PoolWorkerError
from mobile_sim.backends.ray_backend import RayWorkerError

ROOT = Path(__file__).resolve().parents[2]


def _main_raising(
    exc: BaseException, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    def run(_args: argparse.Namespace) -> int:
        raise exc

    parser = argparse.ArgumentParser(prog="plume sim")
    parser.set_defaults(func=run, _prog="plume sim")
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    status = cli.main([])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (
            RayWorkerError("a Ray actor was still training devices dev-0002 after 1 s"),
            "plume sim: error: a Ray actor was still training devices dev-0002 after 1 s\n",
        ),
        (
            PoolWorkerError(
                'a worker failed:\nTraceback (most recent call last):\n  File "x.py", line 1'
                "\nValueError: no such model"
            ),
            "plume sim: error: a worker failed: ValueError: no such model\n",
        ),
        (PoolWorkerError("a worker process died"), "plume sim: error: a worker process died\n"),
    ],
)
def test_worker_errors_end_in_one_line(
    exc: BaseException,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    status, err = _main_raising(exc, monkeypatch, capsys)
    assert (status, err) == (1, line)


def test_an_actors_exception_is_one_line_with_status_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exceptions = pytest.importorskip("ray.exceptions", reason="needs `pip install .[ray]`")
    cause = ValueError("ort_artifacts: art is not a folder")
    # As Ray raises it: also an instance of the actor's exception class (here a ValueError,
    # which the usage-mistake net would have taken, with status 2 and Ray's header line).
    exc = exceptions.RayTaskError(
        "WorkerState.__init__", "Traceback (most recent call last):\nValueError: ...", cause
    ).as_instanceof_cause()
    assert isinstance(exc, ValueError)
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    status, err = _main_raising(exc, monkeypatch, capsys)
    assert status == 1
    assert err == (
        "plume sim: error: a Ray actor failed: ValueError: ort_artifacts: art is not a folder\n"
    )


def test_plume_debug_keeps_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PLUME_DEBUG", "1")
    with pytest.raises(RayWorkerError):
        _main_raising(RayWorkerError("stalled"), monkeypatch, capsys)


def test_other_errors_are_left_as_before(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    assert _main_raising(ValueError("bad value"), monkeypatch, capsys) == (
        2,
        "plume sim: error: bad value\n",
    )
    with pytest.raises(RuntimeError, match="not a worker"):
        _main_raising(RuntimeError("not a worker"), monkeypatch, capsys)


def test_plume_sim_pool_stall_is_one_line(tmp_path: Path) -> None:
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if k != "PLUME_DEBUG"}
    # One worker: the stall and its one line are the same whatever the count (the default, one
    # per CPU, spawned a second process importing torch here, more on a larger machine);
    # test_h59_pool_stall stops a pool of two stalled or killed workers.
    cmd = [
        sys.executable, "-m", "coordinator.cli", "sim", "--dataset", "digits", "--clients", "6",
        "--per-round", "3", "--rounds", "2", "--backend", "pool", "--workers", "1",
        "--job-timeout", "0.001", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    # Which stall it names depends on the load: a worker still training, or (on a loaded
    # machine, within 0.001 s) one that had not yet read its task (process_pool's two texts)
    stalls = ("was still training devices ", "had still not read its task for devices ")
    assert any(last.startswith(f"plume sim: error: a worker {s}") for s in stalls), last
