"""The process pool: persistent workers, shared-memory params and deltas, dynamic dispatch."""

from __future__ import annotations

from dataclasses import replace
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from mobile_sim.backends import JobResult, SequentialBackend, TrainContext, TrainJob, process_pool
from mobile_sim.backends.process_pool import PoolWorkerError, ProcessPoolBackend
from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from sdk.flat import get_flat_params


def _jobs(n: int, round_id: int) -> tuple[TrainContext, np.ndarray, list[TrainJob]]:
    data = load_digits_data()
    rng = np.random.default_rng(round_id)
    ctx = TrainContext("digits_mlp", data.x_train, data.y_train, epochs=2, batch_size=8, lr=0.1)
    jobs = [
        TrainJob(
            f"dev-{i}",
            i,
            round_id,
            0,
            np.sort(rng.choice(len(data.x_train), size=1 + (i * 11) % 41, replace=False)),
        )
        for i in range(n)
    ]
    return ctx, get_flat_params(build_model("digits_mlp")), jobs


def _assert_same(a: list[JobResult], b: list[JobResult]) -> None:
    assert [r.device_id for r in a] == [r.device_id for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.num_examples == rb.num_examples
        np.testing.assert_allclose(ra.delta, rb.delta, atol=1e-5, rtol=1e-4)
        assert ra.loss == pytest.approx(rb.loss, rel=1e-4, abs=1e-6)


# The names of the shared-memory segments this process created (the pool's parent creates every
# segment; its workers only attach). /dev/shm is the machine's: another process's pool (a second
# test run, another user's job) creates and removes its own segments there at any time, and two
# of them, made while test_pool_matches_the_sequential_backend_over_rounds_then_fails_cleanly
# ran, failed its "nothing left" check (helper-158, a full tests/mobile_sim/ run).
_CREATED: set[str] = set()
_make_filename = shared_memory._make_filename  # type: ignore[attr-defined]


def _recorded_filename() -> str:
    name: str = _make_filename()
    _CREATED.add(name.lstrip("/"))
    return name


shared_memory._make_filename = _recorded_filename  # type: ignore[attr-defined]
# The pool names its segments itself where /dev/shm holds them (`process_pool._segment_name`).
_segment_name = process_pool._segment_name


def _recorded_segment_name() -> str | None:
    name = _segment_name()
    if name is not None:
        _CREATED.add(name)
    return name


process_pool._segment_name = _recorded_segment_name


def _shm_names() -> set[str]:
    """The segments this process created that are still in /dev/shm (a leak once its pool is
    closed); another process's are not counted."""
    root = Path("/dev/shm")
    return {p.name for p in root.iterdir() if p.name in _CREATED} if root.is_dir() else set()


def test_pool_matches_the_sequential_backend_over_rounds_then_fails_cleanly() -> None:
    # Prepare: rounds of 7, 12 (the output block grows) and 3 jobs, with new params each time;
    # then a round where one job points past the end of the data (refused before the workers
    # see it), and one whose trainer fails inside a worker (no ONNX artifacts).
    ctx, params, jobs7 = _jobs(7, 1)
    _, _, jobs12 = _jobs(12, 2)
    _, _, jobs3 = _jobs(3, 3)
    params2 = params + np.float32(0.01)
    past_end = replace(jobs3[1], indices=np.array([len(ctx.x_train) + 5]))
    bad = replace(jobs3[1], trainer="ort")
    before = _shm_names()
    seq = SequentialBackend()
    seq.start(ctx)
    pool = ProcessPoolBackend(workers=2, inner="sequential")

    # Execute
    pool.start(ctx)
    try:
        got = [pool.train(params, jobs7), pool.train(params2, jobs12), pool.train(params, jobs3)]
        empty = pool.train(params, [])
        with pytest.raises(ValueError, match=rf"dev-1: .* in \[0, {len(ctx.x_train)}\)"):
            pool.train(params, [jobs3[0], past_end, jobs3[2]])
        again = pool.train(params, jobs3)  # still running
        with pytest.raises(PoolWorkerError, match="ort_artifacts"):
            pool.train(params, [jobs3[0], bad, jobs3[2]])
        with pytest.raises(RuntimeError, match="not started"):  # a failure stops the pool
            pool.train(params, jobs3)
    finally:
        pool.close()
    pool.close()  # idempotent

    # Assert: every result in job order, as the reference computes it; nothing left in /dev/shm.
    _assert_same(got[0], seq.train(params, jobs7))
    _assert_same(got[1], seq.train(params2, jobs12))
    _assert_same(got[2], seq.train(params, jobs3))
    _assert_same(again, got[2])
    assert empty == []
    assert _shm_names() - before == set()


def test_a_worker_that_cannot_start_fails_start_clearly() -> None:
    # Prepare
    ctx, _, _ = _jobs(1, 1)
    pool = ProcessPoolBackend(workers=1)

    # Execute / Assert
    with pytest.raises(PoolWorkerError, match="unknown model"):
        pool.start(replace(ctx, model="no_such_model"))
    with pytest.raises(RuntimeError, match="not started"):
        pool.train(np.zeros(3, np.float32), [])
