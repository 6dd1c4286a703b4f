"""A pool worker frozen after it replied cannot hang the parent in the send of its next task: a
task bigger than the pipe's buffer is written by a sender thread, and the stall limit fails the
round as it does for a worker stuck in training."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from mobile_sim.backends import SequentialBackend
from mobile_sim.backends.process_pool import PoolWorkerError, ProcessPoolBackend
from tests.mobile_sim.test_backends_pool import _jobs, _shm_names


@functools.cache
def warm_torch_for_fork() -> None:
    """Train once in this process, so that "fork" pool workers start warm.

    A forked worker inherits torch's lazy one-time set-up from its parent: done here once, a
    pool starts and trains its first round in about 0.1 s instead of 1.5-4 s per pool (each
    worker paid it in its first task). Stall tests then spend their time on the limits they
    check. One torch thread, as the workers use: no thread pool is running when they fork.
    """
    import torch

    ctx, params, jobs = _jobs(2, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backend = SequentialBackend()
        backend.start(ctx)
        backend.train(params, jobs)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _warm_parent() -> None:
    warm_torch_for_fork()  # once per session: "fork" pools then start warm


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
@pytest.mark.timeout(60)  # before the fix, train blocked in conn.send until the worker died
def test_a_worker_frozen_after_replying_fails_a_round_whose_task_overfills_its_pipe() -> None:
    # Prepare: one honest round, so the worker has read and answered everything sent to it.
    # Then the worker is frozen (SIGSTOP) and a device with 2**20 example indices (8 MiB
    # pickled, far more than a pipe or socket buffer holds) is sent to it under a 0.5 s stall
    # limit. (The automatic limit would scale with those examples: a fixed one keeps it short.)
    limit = 0.5
    ctx, params, jobs = _jobs(2, 1)
    big = replace(jobs[0], indices=np.arange(2**20, dtype=np.int64) % len(ctx.y_train))
    before = _shm_names()
    pool = ProcessPoolBackend(workers=1, inner="sequential", start_method="fork")
    pool.start(ctx)
    proc = pool._procs[0]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pool.train(params, [big, jobs[1]])
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            errors.append(exc)

    # Execute
    try:
        pool.train(params, jobs)  # unlimited: it pays the worker's warm-up
        pool.job_timeout_s = limit
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        runner.join(15.0)
        failed_after = time.monotonic() - t0
        hung = runner.is_alive()
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)  # frees a send blocked before the fix
        pool.close()

    # Assert: train returned with the stall error, naming the device whose task was unread,
    # soon after the limit; the frozen worker was killed and no shared block is left.
    assert not hung, "train blocked in the send to a frozen worker"
    assert len(errors) == 1 and isinstance(errors[0], PoolWorkerError), errors
    assert "had still not read its task for devices dev-0 after the 0.5 s stall limit" in str(
        errors[0]
    )
    assert failed_after < limit + 8.0
    assert not proc.is_alive()
    assert _shm_names() - before == set()
