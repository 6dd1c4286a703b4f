"""The process pool cannot hang `plume sim` forever: a stuck worker meets an automatic stall
limit (job_timeout_s None, the default), and a worker killed from outside fails the round."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest

from mobile_sim.backends import process_pool
from mobile_sim.backends._worker import StallLimit
from mobile_sim.backends.process_pool import PoolWorkerError, ProcessPoolBackend
from tests.mobile_sim.test_backends_pool import _jobs, _shm_names
from tests.mobile_sim.test_h71_pool_send_stall import warm_torch_for_fork


@pytest.fixture(autouse=True, scope="module")
def _warm_parent() -> None:
    warm_torch_for_fork()  # once per session: "fork" pools then start warm


@dataclass
class _SpinsAfterMark:
    """A data attack that writes `<folder>/<pid>` and then keeps its worker busy forever."""

    folder: str

    def poison_data(self, x: Any, y: Any, rng: Any) -> NoReturn:
        Path(self.folder, str(os.getpid())).write_text("busy")
        n = 0
        while True:
            n += 1


def _wait_for_mark(folder: Path, timeout_s: float = 20.0) -> int:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        marks = list(folder.iterdir())
        if marks:
            return int(marks[0].name)
        time.sleep(0.01)
    raise AssertionError("no worker reached the spinning job")


@pytest.mark.timeout(60)  # before the automatic limit, the spinning round waited forever
def test_a_stuck_worker_fails_the_round_under_the_default_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the default pool (no job_timeout_s); a floor of 0.5 s stands for the 300 s one
    # (the rule is the default's, only its numbers are shrunk).
    # An honest round teaches it the time per example; then the largest job (dev-3, sent
    # first) spins while the other worker trains the rest.
    monkeypatch.setattr(StallLimit, "FLOOR_S", 0.5)
    ctx, params, jobs = _jobs(6, 1)
    spinning = [replace(j, data_attack=_SpinsAfterMark(str(tmp_path))) if j.device_id == "dev-3"
                else j for j in jobs]  # fmt: skip
    before = _shm_names()
    pool = ProcessPoolBackend(workers=2, inner="sequential", start_method="fork")
    assert pool.job_timeout_s is None
    pool.start(ctx)
    procs = list(pool._procs)
    # Execute
    try:
        honest = pool.train(params, jobs)
        t0 = time.monotonic()
        with pytest.raises(PoolWorkerError, match=r"devices dev-3 after .* automatic stall limit"):
            pool.train(params, spinning)
        failed_after = time.monotonic() - t0
    finally:
        pool.close()
    # Assert: the honest round finished; the stuck one failed soon after the floor, and the
    # workers and shared blocks are gone.
    assert len(honest) == 6
    assert failed_after < 0.5 + 10.0
    assert [p.is_alive() for p in procs] == [False, False]
    assert _shm_names() - before == set()


@pytest.mark.timeout(60)
def test_a_worker_stuck_in_its_first_task_meets_the_first_task_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: one worker whose very first job spins: no rate is known yet.
    monkeypatch.setattr(StallLimit, "FIRST_S", 0.5)
    ctx, params, jobs = _jobs(2, 1)
    pool = ProcessPoolBackend(workers=1, inner="vectorized", start_method="fork")
    pool.start(ctx)
    # Execute / Assert
    try:
        with pytest.raises(PoolWorkerError, match=r"0\.5 s for a worker's first task.*--job"):
            pool.train(
                params, [jobs[0], replace(jobs[1], data_attack=_SpinsAfterMark(str(tmp_path)))]
            )
    finally:
        pool.close()


@pytest.mark.timeout(60)
def test_a_worker_killed_from_outside_mid_job_or_idle_fails_the_round_at_once(
    tmp_path: Path,
) -> None:
    # Prepare: the default limits (an hour before any task finished: far beyond this test).
    ctx, params, jobs = _jobs(4, 1)
    spinning = [*jobs[:3], replace(jobs[3], data_attack=_SpinsAfterMark(str(tmp_path)))]
    before = _shm_names()
    pool = ProcessPoolBackend(workers=2, inner="sequential", start_method="fork")
    pool.start(ctx)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pool.train(params, spinning)
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            errors.append(exc)

    # Execute: SIGKILL the worker once it is inside the spinning job (the OOM killer's way)
    try:
        runner = threading.Thread(target=run)
        runner.start()
        pid = _wait_for_mark(tmp_path)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        runner.join(20.0)
        failed_after = time.monotonic() - t0
        # ... and, restarted, a worker killed while idle between rounds
        pool.start(ctx)
        pool.train(params, jobs)
        victim = pool._procs[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10.0)
        t1 = time.monotonic()
        with pytest.raises(PoolWorkerError, match="died"):
            pool.train(params, jobs)
        idle_failed_after = time.monotonic() - t1
    finally:
        pool.close()
    # Assert: both end in a PoolWorkerError within seconds, nothing left behind
    assert not runner.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], PoolWorkerError), errors
    assert "died" in str(errors[0])
    assert failed_after < 10.0 and idle_failed_after < 10.0
    assert _shm_names() - before == set()


@pytest.mark.timeout(60)
def test_a_worker_killed_before_reading_its_task_is_a_pool_worker_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: one worker, stopped (SIGSTOP) so that the round's task stays unread in its
    # pipe; it is killed once the parent waits for the reply. A socket closed with unread data
    # resets the connection: the parent's read raised a bare ConnectionResetError before.
    ctx, params, jobs = _jobs(2, 1)
    pool = ProcessPoolBackend(workers=1, inner="vectorized", start_method="fork")
    pool.start(ctx)
    waiting = threading.Event()
    real_wait = process_pool.wait

    def wait(conns: Any, timeout: float | None = None) -> Any:
        waiting.set()
        return real_wait(conns, timeout)

    monkeypatch.setattr(process_pool, "wait", wait)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pool.train(params, jobs)
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            errors.append(exc)

    # Execute
    try:
        pid = pool._procs[0].pid
        os.kill(pid, signal.SIGSTOP)
        runner = threading.Thread(target=run)
        runner.start()
        assert waiting.wait(20.0)
        os.kill(pid, signal.SIGKILL)
        runner.join(20.0)
    finally:
        pool.close()
    # Assert
    assert not runner.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], PoolWorkerError), errors
    assert "died" in str(errors[0])


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(240)  # before, job_timeout_s None was no limit: ray.get waited forever
def test_ray_meets_the_same_automatic_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: one actor on the backend's own runtime; a floor of 2 s stands for the 300 s
    # one. Round 1 is the actor's first share (warm-up: not a rate), round 2 gives the rate,
    # round 3 spins in C (a lambda: Ray ships it by value).
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    from mobile_sim.backends.ray_backend import RayBackend, RayWorkerError

    monkeypatch.setattr(StallLimit, "FLOOR_S", 2.0)
    ctx, params, jobs = _jobs(3, 1)
    spin = SimpleNamespace(poison_data=lambda x, y, r: deque(itertools.count(), maxlen=0))
    spinning = [*jobs[:2], replace(jobs[2], data_attack=spin)]
    backend = RayBackend(workers=1, num_cpus=1)
    assert backend.job_timeout_s is None
    # Execute
    try:
        backend.start(ctx)
        backend.train(params, jobs)
        backend.train(params, jobs)
        t0 = time.monotonic()
        with pytest.raises(RayWorkerError, match=r"dev-2 after .* automatic stall limit"):
            backend.train(params, spinning)
        failed_after = time.monotonic() - t0
    finally:
        backend.close()
    # Assert: cut near the floor (plus the runtime's shutdown); the runtime is gone
    assert failed_after < 2.0 + 30.0
    assert not ray.is_initialized()
