"""A terminal's Ctrl-C reaches the whole foreground process group, so the pool's workers got
SIGINT too and printed KeyboardInterrupt tracebacks before `plume sim`'s one line. Workers now
ignore SIGINT (the parent handles the interrupt and closes the pool). Deterministic: SIGINT is
sent to a worker's pid, never a real Ctrl-C at a wall-clock time."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mobile_sim.backends import process_pool
from mobile_sim.backends.process_pool import ProcessPoolBackend
from tests.mobile_sim.test_backends_pool import _jobs, _shm_names
from tests.mobile_sim.test_h71_pool_send_stall import warm_torch_for_fork

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")


@pytest.fixture(autouse=True, scope="module")
def _warm_parent() -> None:
    warm_torch_for_fork()  # "fork" pools then start warm


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "method",
    ["fork", pytest.param("spawn", marks=pytest.mark.slow)],  # spawn: ~8 s loaded
)
def test_a_worker_keeps_running_and_prints_nothing_on_sigint(
    method: str, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a pool that trained a round; the workers idle in recv. Close waits up to 10 s
    # (production: 0.5 s) for a task's sender thread to end, so that one still ending on a
    # loaded machine does not get its worker killed (-9; this test failed so once, b5a62ef).
    monkeypatch.setattr(process_pool, "_SENDER_SETTLE_S", 10.0)
    ctx, params, jobs = _jobs(4, 1)
    before = _shm_names()
    pool = ProcessPoolBackend(workers=2, inner="sequential", start_method=method)
    pool.start(ctx)
    procs = list(pool._procs)
    try:
        first = pool.train(params, jobs)
        capfd.readouterr()

        # Execute: SIGINT to one worker, as a terminal's Ctrl-C sends it
        os.kill(procs[0].pid, signal.SIGINT)
        time.sleep(0.3)  # a worker that acted on it has exited and printed by now
        alive = [p.is_alive() for p in procs]
        again = pool.train(params, jobs)
        t0 = time.monotonic()
        pool.close()
        took = time.monotonic() - t0
    finally:
        for proc in procs:  # only if the assertions below are about to fail
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    err = capfd.readouterr().err

    # Assert: still running, silent, training as before; close still ends both at once and
    # cleanly (exit status 0: their stop message, not a kill)
    assert alive == [True, True]
    assert "KeyboardInterrupt" not in err and "Traceback" not in err, err
    assert [r.device_id for r in again] == [r.device_id for r in first]
    assert took < 10.0, f"close took {took:.1f} s"
    assert [p.exitcode for p in procs] == [0, 0]
    assert _shm_names() - before == set()


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("default_sigint")  # also where SIGINT was inherited ignored
def test_starting_a_pool_leaves_the_parents_sigint_handling_as_it_was() -> None:
    # Prepare
    ctx, params, jobs = _jobs(2, 1)
    handler = signal.getsignal(signal.SIGINT)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    pool = ProcessPoolBackend(workers=1, start_method="fork")

    # Execute
    try:
        pool.start(ctx)
        pool.train(params, jobs)
    finally:
        pool.close()

    # Assert: the parent still gets Ctrl-C as a KeyboardInterrupt, and nothing stays blocked
    assert signal.getsignal(signal.SIGINT) is handler
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == blocked
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)  # the handler runs at the next bytecode; never reached
