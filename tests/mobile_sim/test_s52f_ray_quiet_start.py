"""`plume sim --backend ray` starts its private Ray runtime without Ray's own log lines.

Ray's driver logger printed two timestamped lines on stderr at start, amid the CLI's one-line
style: `... WARNING authentication_token_setup.py:85 -- Token authentication is enabled for this
Ray cluster ...` and `... INFO worker.py:2038 -- Started a local Ray instance.`. The backend now
passes ray.init's documented `logging_level` (ERROR for the runtime it starts). A worker's
failure is still Plume's one error line, status 1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Ray's logger format: "2026-12-05 18:40:42,405\tWARNING file.py:85 -- message"
RAY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR)\s")
# One actor, one small round; --topk 0.1 keeps 241 values, so no few-kept note is printed.
TINY_RAY = [
    "sim", "--backend", "ray", "--workers", "1", "--dataset", "digits", "--clients", "6",
    "--per-round", "3", "--local-epochs", "1", "--no-progress", "--topk", "0.1",
]  # fmt: skip


def _plume(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PLUME_DEBUG", "RAY_ADDRESS")}
    cmd = [sys.executable, "-m", "coordinator.cli", *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.ray
def test_a_ray_run_prints_no_ray_log_line(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    # Execute
    done = _plume([*TINY_RAY, "--rounds", "1", "--out", str(tmp_path / "run")])
    # Assert: the run ended, and stderr holds none of Ray's start-up lines (nothing at all:
    # this run has no note to say)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "rounds.json").exists()
    assert not [line for line in done.stderr.splitlines() if RAY_LOG_LINE.match(line)], done.stderr
    assert "Ray instance" not in done.stderr and "Token authentication" not in done.stderr
    assert done.stderr == "", done.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_a_ray_workers_stall_is_still_plumes_one_line(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    # Execute: every job outlasts a 0.001 s stall limit
    argv = [*TINY_RAY, "--rounds", "2", "--job-timeout", "0.001", "--out", str(tmp_path / "r")]
    done = _plume(argv)
    # Assert
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("plume sim: error: a Ray actor was still training devices ")
