"""`ProcessPoolBackend.close()` is prompt when an idle worker is frozen (SIGSTOP): it continues
the worker so that it reads its stop message, and kills one that still has not exited after a
short grace period, instead of waiting 10 s for it and 10 s more after a SIGTERM it could not
act on."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from mobile_sim.backends import process_pool
from mobile_sim.backends.process_pool import ProcessPoolBackend
from tests.mobile_sim.test_backends_pool import _jobs, _shm_names
from tests.mobile_sim.test_h71_pool_send_stall import warm_torch_for_fork

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")


@pytest.fixture(autouse=True, scope="module")
def _warm_parent() -> None:
    warm_torch_for_fork()  # "fork" pools then start warm


# Seconds close waits for a task's sender thread to end (production: 0.5): generous here, so
# that a thread still ending on a loaded machine does not get its worker killed (-9). It costs
# nothing: the wait returns as soon as the thread has ended.
_SETTLE_S = 10.0


@pytest.mark.timeout(60)
def test_close_with_a_frozen_idle_worker_is_prompt_and_lets_both_workers_exit_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: two workers that each answered a round, then one frozen while idle.
    monkeypatch.setattr(process_pool, "_SENDER_SETTLE_S", _SETTLE_S)
    ctx, params, jobs = _jobs(4, 1)
    before = _shm_names()
    pool = ProcessPoolBackend(workers=2, inner="sequential", start_method="fork")
    pool.start(ctx)
    procs = list(pool._procs)
    try:
        assert len(pool.train(params, jobs)) == 4
        os.kill(procs[0].pid, signal.SIGSTOP)

        # Execute
        t0 = time.monotonic()
        pool.close()
        took = time.monotonic() - t0
    finally:
        for proc in procs:  # only if the assertions below are about to fail
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    # Assert: well under the 20 s it took (join 10 s, SIGTERM held pending, join 10 s more);
    # the frozen worker was continued and exited on its stop message (exit status 0, not
    # killed), as did the other; no shared block is left.
    assert took < 10.0, f"close took {took:.1f} s"
    assert [p.exitcode for p in procs] == [0, 0]
    assert _shm_names() - before == set()


@pytest.mark.timeout(60)
def test_a_worker_that_does_not_exit_within_the_grace_period_is_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a frozen worker that continuing does not wake (as under a debugger's ptrace
    # stop): SIGCONT is withheld from it. The grace period is 2 s (production's, set here so
    # the bound below holds if that changes): the honest worker must exit inside it, and the
    # frozen one waits it out.
    grace = 2.0
    ctx, params, jobs = _jobs(4, 1)
    pool = ProcessPoolBackend(workers=2, inner="sequential", start_method="fork")
    pool.start(ctx)
    procs = list(pool._procs)
    frozen = procs[0].pid
    real_continue = process_pool._continue

    def withheld(proc: Any) -> None:
        if proc.pid != frozen:
            real_continue(proc)

    monkeypatch.setattr(process_pool, "_continue", withheld)
    monkeypatch.setattr(process_pool, "_STOP_GRACE_S", grace)
    monkeypatch.setattr(process_pool, "_SENDER_SETTLE_S", _SETTLE_S)
    try:
        pool.train(params, jobs)
        os.kill(frozen, signal.SIGSTOP)

        # Execute
        t0 = time.monotonic()
        pool.close()
        took = time.monotonic() - t0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    # Assert: one grace period for all the workers, then SIGKILL for the one still there (not
    # the 10 s join and 10 s more after a SIGTERM of before); the honest worker was not killed.
    assert took < grace + 6.0, f"close took {took:.1f} s"
    assert [p.exitcode for p in procs] == [-signal.SIGKILL, 0]
