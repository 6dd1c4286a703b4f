"""Scale-out backends under failure: a worker dying mid-round, shared memory, Ray sizing."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mobile_sim.backends import SequentialBackend
from mobile_sim.backends.process_pool import PoolWorkerError, ProcessPoolBackend
from tests.mobile_sim.test_backends_pool import _assert_same, _jobs, _shm_names
from tests.mobile_sim.test_h71_pool_send_stall import warm_torch_for_fork


class _Dies:
    """A data attack whose worker process exits at once, as a segfault or OOM kill would."""

    def poison_data(self, x: Any, y: Any, rng: Any) -> Any:
        os._exit(3)


class _Stalls:
    """A data attack that keeps its worker busy far longer than the test may take."""

    def poison_data(self, x: Any, y: Any, rng: Any) -> Any:
        time.sleep(120)
        return x, y


def _mapped_blocks(pid: int) -> set[str]:
    """Names of the shared-memory blocks process `pid` still maps (unlinked ones included)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {
        Path(line.removesuffix(" (deleted)").split()[-1]).name for line in lines if "/psm_" in line
    }


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
def test_a_dying_worker_fails_the_round_promptly_leaks_nothing_and_the_pool_restarts() -> None:
    # Prepare: rounds of 3 then 12 jobs (the output block is replaced by a bigger one), then a
    # round where one worker dies while the other is deep in a long job. The workers fork from
    # a parent that trained once (they start warm: spawned, each paid torch's start-up twice);
    # a forked worker also inherits the parent's own mappings, which are not the pool's.
    warm_torch_for_fork()
    ctx, params, jobs3 = _jobs(3, 1)
    _, _, jobs12 = _jobs(12, 2)
    dies = replace(jobs3[0], data_attack=_Dies())
    stalls = replace(jobs12[10], data_attack=_Stalls())  # the largest job: dispatched first
    before = _shm_names()
    pool = ProcessPoolBackend(workers=2, inner="sequential", start_method="fork")
    inherited = _mapped_blocks(os.getpid())
    pool.start(ctx)
    try:
        pool.train(params, jobs3)
        pool.train(params, jobs12)
        live = {pool._params.name, pool._out.name}  # type: ignore[union-attr]
        mapped = [_mapped_blocks(p.pid) - inherited for p in pool._procs]

        # Execute: the dying round, then a fresh start.
        t0 = time.monotonic()
        with pytest.raises(PoolWorkerError, match="died"):
            pool.train(params, [stalls, dies])
        failed_after = time.monotonic() - t0
        leaked = _shm_names() - before
        pool.start(ctx)
        again = pool.train(params, jobs12)
    finally:
        pool.close()

    # Assert: workers map only the live blocks (not the unlinked 3-slot one); the error came
    # without waiting for the stalled job; no block survived the failure; the restarted pool
    # gives the reference results.
    assert mapped == [live, live]
    # far below the stalled job's 120 s, far above a loaded machine's lag
    assert failed_after < 60.0
    assert leaked == set()
    seq = SequentialBackend()
    seq.start(ctx)
    _assert_same(again, seq.train(params, jobs12))
    assert _shm_names() - before == set()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(240)  # before the fix the second actor never got a CPU: train hung
def test_ray_places_more_workers_than_cpus_and_closes_only_its_own_runtime() -> None:
    # Prepare: one CPU, two workers; a job whose actor process dies (a lambda, so Ray ships
    # it by value: the test package need not be importable on the workers).
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    from mobile_sim.backends.ray_backend import RayBackend

    ctx, params, jobs = _jobs(6, 1)
    dies = replace(jobs[0], data_attack=SimpleNamespace(poison_data=lambda x, y, r: os._exit(3)))
    seq = SequentialBackend()
    seq.start(ctx)
    want = seq.train(params, jobs)

    # Execute: on the caller's runtime, then on the backend's own.
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        theirs = RayBackend(workers=2)
        theirs.start(ctx)
        got = theirs.train(params, jobs)
        with pytest.raises(ray.exceptions.RayError):
            theirs.train(params, [dies])
        theirs.close()
        kept_up = ray.is_initialized()
    finally:
        ray.shutdown()
    own = RayBackend(workers=2, num_cpus=1)
    try:
        own.start(ctx)
        got_own = own.train(params, jobs)
    finally:
        own.close()

    # Assert: the reference results both times; close left the caller's runtime running and
    # shut down the one the backend started.
    _assert_same(got, want)
    _assert_same(got_own, want)
    assert kept_up
    assert not ray.is_initialized()


def test_a_shared_block_that_cannot_be_made_leaves_close_working_and_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: blocks for d=8, then the new model size's params block cannot be created.
    from mobile_sim.backends import process_pool

    before = _shm_names()
    pool = ProcessPoolBackend(workers=1)  # no workers are needed to size the blocks
    pool._blocks(8, 2)
    real = process_pool._Shared

    def refuse(shape: tuple[int, ...], name: str | None = None) -> Any:
        if name is None and shape == (9,):
            raise OSError(28, "No space left on device")
        return real(shape, name)

    monkeypatch.setattr(process_pool, "_Shared", refuse)

    # Execute
    with pytest.raises(OSError, match="No space"):
        pool._blocks(9, 2)
    pool.close()

    # Assert: close went through, and unlinked the output block it still held.
    assert _shm_names() - before == set()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="Linux shared memory")
def test_a_round_too_big_for_dev_shm_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: /dev/shm as Docker sizes it by default (64 MiB, all free), and a round of 100
    # MNIST-CNN-sized deltas (665 MB) whose writes would kill the workers with SIGBUS.
    real = os.statvfs

    def docker(path: str) -> Any:
        st = real(path)
        return SimpleNamespace(f_bavail=(64 << 20) // st.f_frsize, f_frsize=st.f_frsize)

    monkeypatch.setattr(os, "statvfs", docker)
    before = _shm_names()
    pool = ProcessPoolBackend(workers=1)

    # Execute / Assert: the params block fits, the output block is refused, nothing is left.
    with pytest.raises(PoolWorkerError, match=r"needs 634\.5 MiB .* has 64\.0 MiB free"):
        pool._blocks(1_663_370, 100)
    pool.close()
    assert _shm_names() - before == set()
