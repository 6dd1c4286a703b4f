"""Scale-out backends bounded: a stall limit per task (pool, Ray), one start-up deadline (pool)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
from collections import deque
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, NoReturn, cast

import numpy as np
import pytest

from mobile_sim.backends import SequentialBackend, process_pool
from mobile_sim.backends.process_pool import PoolWorkerError, ProcessPoolBackend
from tests.mobile_sim.test_backends_pool import _assert_same, _jobs, _shm_names
from tests.mobile_sim.test_h71_pool_send_stall import warm_torch_for_fork
from tests.mobile_sim.test_review_backends import _Dies


@pytest.fixture(autouse=True, scope="module")
def _warm_parent() -> None:
    warm_torch_for_fork()  # once per session: "fork" pools then start warm


class _Spins:
    """A data attack that keeps its worker busy forever: alive, on the CPU, never replying."""

    def poison_data(self, x: Any, y: Any, rng: Any) -> NoReturn:
        n = 0
        while True:
            n += 1


def _never_loads() -> NoReturn:
    """Blocks the process that unpickles it (a spawned worker, before it can be ready)."""
    threading.Event().wait()
    raise AssertionError("unreachable: the event is never set")


class _NeverLoads:
    """Training data whose unpickling never returns: a worker that never becomes ready."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _never_loads, ()


class _KillsItsLoader:
    """Training data whose unpickling ends the process, as the OOM killer might mid-start."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return os._exit, (3,)


def test_honest_rounds_keep_their_bits_under_a_limit_and_a_spinning_job_fails_within_it() -> None:
    # Prepare: 2 workers ("fork" from a warm parent: started in a blink); 9 honest jobs (more
    # tasks than workers: the wait loop wakes and dispatches many times); then a round whose
    # two largest jobs (dev-3, then dev-2: sent first) spin forever, so no honest job can be
    # the one that is late.
    ctx, params, jobs = _jobs(9, 1)
    spinning = [
        replace(j, data_attack=_Spins()) if j.device_id in ("dev-2", "dev-3") else j
        for j in jobs[:6]
    ]
    before = _shm_names()
    limit = 0.5
    pool = ProcessPoolBackend(workers=2, inner="sequential", start_method="fork")
    pool.start(ctx)
    procs = list(pool._procs)

    # Execute: a round without a limit, the same round with a limit no honest job comes near
    # (the first round paid the workers' warm-up), then the spinning round under a tight one.
    try:
        free = pool.train(params, jobs)
        pool.job_timeout_s = 300.0
        bounded = pool.train(params, jobs)
        pool.job_timeout_s = limit
        t0 = time.monotonic()
        with pytest.raises(PoolWorkerError, match=r"devices dev-3 after the 0.5 s stall limit"):
            pool.train(params, spinning)
        failed_after = time.monotonic() - t0
        with pytest.raises(RuntimeError, match="not started"):  # the failure closed the pool
            pool.train(params, jobs)
    finally:
        pool.close()

    # Assert: the same results bit for bit; the error came within the limit plus slack (its
    # close included); no worker lives on and no shared block is left behind.
    assert [r.device_id for r in bounded] == [r.device_id for r in free]
    for a, b in zip(bounded, free, strict=True):
        assert np.array_equal(a.delta, b.delta)
        assert (a.num_examples, a.loss) == (b.num_examples, b.loss)
    assert failed_after < limit + 4.0
    assert [p.is_alive() for p in procs] == [False, False]
    assert _shm_names() - before == set()


def test_a_stalled_vectorized_share_names_its_devices_and_a_dead_worker_still_fails_at_once() -> (
    None
):
    # Prepare: one vectorized worker, so the whole round is one task holding all 12 devices
    # (the message names 10 of them); then, restarted with a long limit, a job whose worker dies.
    ctx, params, jobs = _jobs(12, 2)
    pool = ProcessPoolBackend(workers=1, inner="vectorized", job_timeout_s=0.5, start_method="fork")
    pool.start(ctx)

    # Execute
    try:
        with pytest.raises(PoolWorkerError, match=r"devices dev-0, dev-1, .*, dev-9 and 2 more af"):
            pool.train(params, [*jobs[:11], replace(jobs[11], data_attack=_Spins())])
        pool.job_timeout_s = 600.0
        pool.start(ctx)
        t0 = time.monotonic()
        with pytest.raises(PoolWorkerError, match="died"):
            pool.train(params, [replace(jobs[0], data_attack=_Dies())])
        died_after = time.monotonic() - t0
    finally:
        pool.close()

    # Assert: death is noticed at once, not at the limit.
    assert died_after < 5.0


def test_start_has_one_deadline_for_all_workers_and_says_how_many_were_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: two workers that can never become ready, and a 2 s start-up deadline. Waiting
    # for each worker in turn would take 2 x 2 s; one deadline leaves 2 s for spawning and
    # stopping them on a loaded machine (1 s did: 1.1 s in all here, unloaded).
    ctx, _, _ = _jobs(1, 1)
    deadline = 2.0
    monkeypatch.setattr(process_pool, "_START_TIMEOUT_S", deadline)
    stuck = replace(ctx, x_train=cast(Any, _NeverLoads()))
    pool = ProcessPoolBackend(workers=2)
    children = set(multiprocessing.active_children())

    # Execute
    t0 = time.monotonic()
    with pytest.raises(PoolWorkerError, match=r"0 of 2 workers were ready after 2 s;"):
        pool.start(stuck)
    failed_after = time.monotonic() - t0

    # Assert: one deadline (plus slack for stopping them), and nothing left running.
    assert failed_after < 2 * deadline, failed_after
    assert set(multiprocessing.active_children()) - children == set()
    with pytest.raises(RuntimeError, match="not started"):
        pool.train(np.zeros(3, np.float32), [])


@pytest.mark.timeout(60)  # when the context went in the spawn arguments, start hung here
def test_a_worker_dying_while_it_receives_the_context_fails_start_at_once() -> None:
    # Prepare: the worker dies as it begins to read the context, with megabytes still to come
    # (far more than a pipe holds).
    ctx, _, _ = _jobs(1, 1)
    dying = replace(ctx, x_train=cast(Any, _KillsItsLoader()), y_train=np.zeros(2**20, np.int64))
    pool = ProcessPoolBackend(workers=2)
    children = set(multiprocessing.active_children())

    # Execute / Assert: the death is reported (not the 300 s deadline), nothing left running.
    with pytest.raises(PoolWorkerError, match="died"):
        pool.start(dying)
    assert set(multiprocessing.active_children()) - children == set()


def test_the_limit_must_be_positive_seconds_or_none() -> None:
    # Execute / Assert
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="job_timeout_s"):
            ProcessPoolBackend(workers=1, job_timeout_s=bad)
    assert ProcessPoolBackend(workers=1).job_timeout_s is None


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(240)  # before the limit existed, ray.get waited for the spin forever
def test_ray_kills_its_actors_when_a_share_runs_past_the_limit() -> None:
    # Prepare: one actor on the backend's own one-CPU runtime; a round it trains honestly, then
    # one where a job spins forever in C (a lambda: Ray ships it by value, so the test package
    # need not be importable on the workers).
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    from mobile_sim.backends.ray_backend import RayBackend, RayWorkerError

    ctx, params, jobs = _jobs(3, 1)
    spin = SimpleNamespace(poison_data=lambda x, y, r: deque(itertools.count(), maxlen=0))
    spinning = [*jobs[:2], replace(jobs[2], data_attack=spin)]
    limit = 2.0
    backend = RayBackend(workers=1, num_cpus=1, job_timeout_s=limit)

    # Execute
    try:
        backend.start(ctx)
        honest = backend.train(params, jobs)
        t0 = time.monotonic()
        with pytest.raises(RayWorkerError, match=r"devices dev-0, dev-1, dev-2 after the 2 s"):
            backend.train(params, spinning)
        failed_after = time.monotonic() - t0
        with pytest.raises(RuntimeError, match="not started"):
            backend.train(params, jobs)
    finally:
        backend.close()

    # Assert: the honest round matches the pool's reference; the stall was cut at the limit
    # (plus the runtime's shutdown), and the backend shut down the runtime it had started.
    seq = SequentialBackend()
    seq.start(ctx)
    _assert_same(honest, seq.train(params, jobs))
    assert failed_after < limit + 30.0
    assert not ray.is_initialized()


def test_plume_sim_passes_job_timeout_to_the_pool_and_refuses_it_for_inline_backends() -> None:
    # Prepare
    from coordinator.cli import build_parser
    from mobile_sim._cli import config_from_args
    from mobile_sim.runner import SimConfig, backend_for

    args = build_parser().parse_args(["sim", "--backend", "pool", "--job-timeout", "600"])
    # Execute
    cfg = config_from_args(args)
    backend = backend_for(cfg)
    # Assert: the flag reaches the backend (not started: nothing to close)
    assert isinstance(backend, ProcessPoolBackend)
    assert backend.job_timeout_s == 600.0
    assert backend_for(SimConfig(backend="pool")).job_timeout_s is None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="applies to the pool and ray backends"):
        SimConfig(backend="sequential", job_timeout_s=600.0)
    # 1e308 and anything past a week too: the pool's and Ray's waits overflowed (helper-344)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 7 * 86_400.0 + 1, 1e308):
        with pytest.raises(ValueError, match=r"job_timeout_s must be a finite .* \(a week\)"):
            SimConfig(backend="pool", job_timeout_s=bad)
