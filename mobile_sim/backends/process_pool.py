"""Process-pool backend: a round's jobs split over worker processes on this machine."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import numpy.typing as npt

from ._base import JobResult, TrainContext, TrainJob
from ._worker import INNER_BACKENDS, WorkerState, split_jobs

__all__ = ["ProcessPoolBackend"]

_STATE: WorkerState | None = None  # one per worker process


def _init_worker(ctx: TrainContext, inner: str, threads: int) -> None:
    global _STATE
    _STATE = WorkerState(ctx, inner, threads)


def _train_share(params: npt.NDArray[np.float32], jobs: list[TrainJob]) -> list[JobResult]:
    if _STATE is None:
        raise RuntimeError("worker process was not initialised")
    return _STATE.train(params, jobs)


class ProcessPoolBackend:
    """Trains each round's jobs in `workers` processes (default: one per CPU core).

    The training context (model name, data, SGD settings) is sent to each worker once, at
    start; each round sends the global params and the jobs, and gets deltas back. Workers train
    their share with an inline backend (`inner`: "sequential" or "vectorized"). Processes are
    started with `start_method` ("spawn" by default: safe with torch's thread pools).
    """

    name = "pool"

    def __init__(
        self,
        workers: int | None = None,
        *,
        inner: str = "sequential",
        threads_per_worker: int = 1,
        start_method: str = "spawn",
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError("workers must be >= 1")
        if inner not in INNER_BACKENDS:
            raise ValueError(f"inner backend must be one of {INNER_BACKENDS}, got {inner!r}")
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"start method {start_method!r} is not available here")
        self.workers = workers or os.cpu_count() or 1
        self.inner = inner
        self.threads_per_worker = threads_per_worker
        self.start_method = start_method
        self._pool: ProcessPoolExecutor | None = None

    def start(self, ctx: TrainContext) -> None:
        self.close()
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=_init_worker,
            initargs=(ctx, self.inner, self.threads_per_worker),
        )

    def train(self, params: npt.NDArray[np.float32], jobs: Sequence[TrainJob]) -> list[JobResult]:
        if self._pool is None:
            raise RuntimeError("backend not started")
        shares = split_jobs(jobs, self.workers)
        futures = [self._pool.submit(_train_share, params, [jobs[i] for i in s]) for s in shares]
        results: list[JobResult | None] = [None] * len(jobs)
        for share, fut in zip(shares, futures, strict=True):
            for i, res in zip(share, fut.result(), strict=True):
                results[i] = res
        return [r for r in results if r is not None]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
