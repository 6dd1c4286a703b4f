"""`close` right after `train` stops every worker with its stop message, even when a task's
sender thread, whose write the worker has long read, has not ended yet (a loaded machine)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mobile_sim.backends import process_pool
from mobile_sim.backends.process_pool import ProcessPoolBackend

from .test_backends_pool import _jobs


@pytest.mark.timeout(60)
def test_a_sender_thread_still_ending_does_not_get_its_worker_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: each sender thread lingers 0.3 s after its write is read, as a thread can on a
    # crowded machine; close's wait for a sender to end is 10 s here (0.5 s in production),
    # so that the linger and a loaded machine's wake-ups stay far inside it. The code before
    # b5a62ef did not wait at all: both workers were killed ([-9, -9]).
    monkeypatch.setattr(process_pool, "_SENDER_SETTLE_S", 10.0)
    real = process_pool._send

    def lingering(conn: Any, payload: Any) -> None:
        real(conn, payload)
        time.sleep(0.3)

    monkeypatch.setattr(process_pool, "_send", lingering)
    ctx, params, jobs = _jobs(4, 1)
    pool = ProcessPoolBackend(workers=2, inner="sequential", start_method="fork")
    pool.start(ctx)
    procs = list(pool._procs)
    try:
        assert len(pool.train(params, jobs)) == 4
        # Execute
        pool.close()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    # Assert: both left on their stop message (status 0), none killed
    assert [p.exitcode for p in procs] == [0, 0]
