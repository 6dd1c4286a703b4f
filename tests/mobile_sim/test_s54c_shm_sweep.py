"""s54c: a pool run whose process group is SIGKILLed left its shared-memory segments in
/dev/shm (its resource tracker, which unlinks what a dead parent leaves, is killed with it),
memory only a reboot gave back. The pool's parent now names its segments after itself
(`SEGMENT_PREFIX`, its pid namespace, pid and start time) and a pool's start removes the
segments of this user whose owner is surely gone (no such pid, or a pid reused by a process
started at another time); a live owner's segments, another namespace's and any other name
are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mobile_sim._proc import process_start
from mobile_sim.backends import TrainContext, process_pool
from mobile_sim.backends.process_pool import (
    SEGMENT_PREFIX,
    ProcessPoolBackend,
    sweep_stale_segments,
)

SHM = Path("/dev/shm")
pytestmark = pytest.mark.skipif(
    not SHM.is_dir() or process_start(os.getpid()) is None, reason="Linux /dev/shm and /proc"
)


def _ns() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def made() -> Iterator[list[Path]]:
    """Files this test puts in /dev/shm, removed afterwards if still there."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        path.unlink(missing_ok=True)


def _segment(made: list[Path], name: str) -> Path:
    path = SHM / name
    path.write_bytes(b"\0" * 8)
    made.append(path)
    return path


def test_a_pools_segments_are_named_after_its_parent() -> None:
    pool = ProcessPoolBackend(workers=1)
    try:
        params, out = pool._blocks(9, 2)
        names = [params.name.lstrip("/"), out.name.lstrip("/")]
        assert all((SHM / name).exists() for name in names)
    finally:
        pool.close()
    own = f"{SEGMENT_PREFIX}{_ns()}_{os.getpid()}_{process_start(os.getpid())}_"
    assert all(name.startswith(own) for name in names), names
    assert not any((SHM / name).exists() for name in names)


def test_the_sweep_removes_only_segments_whose_owner_is_gone(made: list[Path]) -> None:
    # Prepare: a live process of this user (a sleeping child) and the segments of each kind
    ns, me, start = _ns(), os.getpid(), process_start(os.getpid())
    assert start is not None
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        child_start = process_start(child.pid)
        gone = _gone_pid()
        tag = f"{me}{gone}"[-8:]  # this test's own names
        stale = [
            _segment(made, f"{SEGMENT_PREFIX}{ns}_{gone}_{start}_{tag}a"),  # no such process
            _segment(made, f"{SEGMENT_PREFIX}{ns}_{me}_{start + 1}_{tag}b"),  # pid reused
        ]
        kept = [
            _segment(made, f"{SEGMENT_PREFIX}{ns}_{me}_{start}_{tag}c"),  # this process's
            _segment(made, f"{SEGMENT_PREFIX}{ns}_{child.pid}_{child_start}_{tag}d"),  # live
            _segment(made, f"{SEGMENT_PREFIX}{ns + 1}_{gone}_{start}_{tag}e"),  # other pid ns
            _segment(made, f"psm_s54c{tag}"),  # not a pool's name
        ]

        # Execute
        removed = sweep_stale_segments()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()

    # Assert
    assert [path.name for path in stale if path.name in removed] == [p.name for p in stale]
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    assert not {path.name for path in kept} & set(removed)


_KILLED_POOL = """
import sys
from multiprocessing import resource_tracker
from mobile_sim.backends.process_pool import ProcessPoolBackend

resource_tracker.ensure_running()  # as `start` does: the tracker shares the process group
pool = ProcessPoolBackend(workers=1)
params, out = pool._blocks(9, 2)
print(params.name.lstrip("/"), out.name.lstrip("/"), flush=True)
sys.stdin.read()
"""


@pytest.mark.timeout(120)
def test_a_pool_start_removes_what_a_killed_pool_run_left(
    made: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a pool run's process group SIGKILLed once its segments are made
    run = subprocess.Popen(
        [sys.executable, "-c", _KILLED_POOL],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.stdout is not None and run.stdin is not None
    names = run.stdout.readline().split()
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    run.stdin.close()
    run.stdout.close()
    left = [SHM / name for name in names]
    made.extend(left)
    assert len(left) == 2 and all(path.exists() for path in left)  # nothing removed them

    # Execute: the next pool's start, stopped as it says it starts its workers (after the
    # sweep: no worker is needed to see it)
    class Started(Exception):
        pass

    def stop(text: str) -> None:
        raise Started(text)

    monkeypatch.setattr(process_pool, "say", stop)
    x, y = np.zeros((4, 64), np.float32), np.zeros(4, np.int64)
    ctx = TrainContext("digits_mlp", x, y, epochs=1, batch_size=8, lr=0.1)
    with pytest.raises(Started, match="starting 1 pool worker"):
        ProcessPoolBackend(workers=1).start(ctx)

    # Assert
    assert not any(path.exists() for path in left)
