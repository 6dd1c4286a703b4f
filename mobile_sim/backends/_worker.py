"""What a remote worker (a pool process or a Ray actor) runs: an inline backend over its share."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ._base import JobResult, TrainContext, TrainJob, import_plugins, num_params
from .sequential import run_job
from .vectorized import VectorizedBackend

__all__ = [
    "INNER_BACKENDS",
    "WorkerState",
    "split_jobs",
    "check_job_timeout",
    "name_devices",
    "StallLimit",
    "task_examples",
    "test_set_size",
    "join_evaluations",
]

INNER_BACKENDS = ("sequential", "vectorized")
# Device ids a stall error lists before it only counts the rest (a vectorized share can hold
# hundreds of jobs).
_NAMED_DEVICES = 10


class StallLimit:
    """The automatic stall limit of a remote task, for `job_timeout_s=None`.

    No fixed figure suits honest work of every size, but within one run every job has the
    same model, epochs and batch size, so a task's time is about proportional to its
    examples. The limit is `FACTOR` times the task's examples at the rate (s per example,
    over the tasks finished since `start`), and at least `FLOOR_S`. A worker's first task
    since `start` pays its warm-up, which no rate predicts (for a tiny model it can be many
    times the task's own work): it gets `FIRST_S` and is left out of the rate, and so is
    every task before a rate is known. So a worker stuck in a job (alive, never replying) fails
    the round instead of hanging it forever, and honest work is far inside.
    """

    FACTOR = 20.0
    FLOOR_S = 300.0
    FIRST_S = 3600.0

    def __init__(self) -> None:
        self.seconds = 0.0  # spent by the finished tasks
        self.examples = 0  # ... on so many examples
        self.warm: set[Hashable] = set()  # workers (by key) that have finished a task

    def task_limit(self, fixed: float | None, worker: Hashable, examples: int) -> float:
        """Seconds `worker`'s task of `examples` examples may run: `fixed` (job_timeout_s) if
        set, else the automatic limit (`FIRST_S` for its first task, which pays its warm-up)."""
        if fixed is not None:
            return fixed
        if worker not in self.warm:
            return self.limit(0, first=True)
        return self.limit(examples)

    def finished(self, worker: Hashable, examples: int, seconds: float) -> None:
        """`worker` finished a task: it counts towards the rate unless it was its first (whose
        time is mostly warm-up)."""
        if worker in self.warm:
            self.observe(examples, seconds)
        self.warm.add(worker)

    def overrun(self, fixed: float | None, worker: Hashable, examples: int) -> str:
        """Which limit `worker`'s task ran past, for the error ("... after <this>; ...")."""
        if fixed is not None:
            return f"the {fixed:g} s stall limit (job_timeout_s)"
        seconds = self.task_limit(None, worker, examples)
        return f"{seconds:.3g} s, the {self.explain(first=worker not in self.warm)}"

    def observe(self, examples: int, seconds: float) -> None:
        self.seconds += max(0.0, seconds)
        self.examples += max(1, examples)

    def limit(self, examples: int, *, first: bool = False) -> float:
        """Seconds a task of `examples` examples may run (`first`: a worker's first task)."""
        if first or not self.examples:
            return self.FIRST_S
        rate = self.seconds / self.examples
        return max(self.FLOOR_S, self.FACTOR * rate * max(1, examples))

    def explain(self, *, first: bool = False) -> str:
        """How the limit was set, for an error message."""
        if first or not self.examples:
            how = f"{self.FIRST_S:g} s for a worker's first task or before any rate is known"
        else:
            how = (
                f"{self.FACTOR:g}x its examples at the finished tasks' time per example, at "
                f"least {self.FLOOR_S:g} s"
            )
        return (
            f"automatic stall limit ({how}; job_timeout_s None): if the work is honest, set "
            "job_timeout_s (plume sim --job-timeout) to a longer limit in seconds"
        )


def test_set_size(ctx: TrainContext) -> tuple[int, int]:
    """(rows, predictions) of `ctx`'s test set, (0, 0) without one: what a remote backend's
    `evaluate` splits (rows) and divides by (predictions, `y_test.size`)."""
    if ctx.x_test is None or ctx.y_test is None:
        return 0, 0
    return len(ctx.x_test), int(np.asarray(ctx.y_test).size)


def join_evaluations(
    parts: Sequence[tuple[int, list[float]] | None], predictions: int
) -> tuple[float, float]:
    """(accuracy, mean loss) from the workers' `WorkerState.evaluate` parts, in row order:
    their correct counts added, their batch losses joined and summed one by one
    (`sdk.trainer.evaluation_result`), as one process's `evaluate` sums them."""
    from sdk.trainer import evaluation_result

    done = [part for part in parts if part is not None]
    correct = sum(part[0] for part in done)
    losses = [loss for part in done for loss in part[1]]
    return evaluation_result(correct, losses, predictions)


def task_examples(jobs: Sequence[TrainJob], task: Sequence[int]) -> int:
    """A task's training examples (its jobs' index counts), the unit of `StallLimit`."""
    return sum(max(1, len(jobs[i].indices)) for i in task)


def check_job_timeout(job_timeout_s: float | None) -> float | None:
    """A remote backend's stall limit: None (no limit) or a finite number of seconds > 0."""
    if job_timeout_s is not None and not 0 < job_timeout_s <= 7 * 86_400.0:
        # Past about 2^31 ms the pool's and Ray's waits overflow (helper-344).
        raise ValueError(
            f"job_timeout_s must be None or in (0, 604800] seconds, got {job_timeout_s!r}"
        )
    return job_timeout_s


def name_devices(jobs: Sequence[TrainJob], task: Sequence[int]) -> str:
    """The device ids of `task`'s jobs, for an error message (at most _NAMED_DEVICES named)."""
    ids = [jobs[i].device_id for i in task]
    named = ", ".join(ids[:_NAMED_DEVICES])
    more = len(ids) - _NAMED_DEVICES
    return f"{named} and {more} more" if more > 0 else named


class WorkerState:
    """Holds the training context once per worker and trains any share of a round's jobs.

    `threads` caps torch's intra-op threads in the worker: with one worker per core, more than
    one thread each only oversubscribes the machine. The context's plugins are imported
    before the model is built. When an inner vectorized backend cannot vmap the model, `warn`
    says so in the worker's log; Ray's driver and the pool's parent pass False and say it
    themselves, once (`fallback_reason`, `RayBackend._say_fallback`, `process_pool`'s
    `_say_fallback`): in a pool each worker said it, the same line once per worker.
    """

    def __init__(
        self, ctx: TrainContext, inner: str = "sequential", threads: int = 1, warn: bool = True
    ) -> None:
        import torch

        if inner not in INNER_BACKENDS:
            raise ValueError(f"inner backend must be one of {INNER_BACKENDS}, got {inner!r}")
        if threads >= 1:
            torch.set_num_threads(threads)
        # A fresh interpreter ("spawn", "forkserver", a Ray actor) has only the built-in
        # models: the plugins register the rest (a no-op in a forked worker, which has them).
        import_plugins(ctx.plugins, ctx.plugin_root)
        self.ctx = ctx
        self.backend: VectorizedBackend | None = None
        self._trainers: dict[str, Any] = {}
        self._eval_model: Any = None  # built at the first `evaluate`
        if inner == "vectorized":
            self.backend = VectorizedBackend(warn=warn)
            self.backend.start(ctx)
            self._size = self.backend._d
        else:
            from .sequential import warm_torch_trainer

            # Built now, not at the first job: a bad model name fails the worker's start, and
            # the first round does not pay for the model or torch's first optimizer.
            self._trainers["torch"] = warm_torch_trainer(ctx)
            self._size = num_params(self._trainers["torch"].module)

    def num_params(self) -> int:
        """The model's parameter count: what the driver's `check_round` holds params to
        (told by a pool worker when it is ready, asked of a Ray actor once), so that params of
        another length are refused there and never reach a worker."""
        return self._size

    def fallback_reason(self) -> str | None:
        """Why this worker's vectorized backend trains its jobs one by one (the vmap probe's
        error), None when it vmaps them or the inner backend is sequential."""
        return None if self.backend is None else self.backend.fallback_reason

    def evaluate(
        self, params: npt.NDArray[np.float32], lo: int, hi: int, batch_size: int
    ) -> tuple[int, list[float]]:
        """`sdk.trainer.evaluation_sums` of `params` on rows [lo, hi) of the context's test
        set (checked once by the driver: `check_evaluation_data`), on a model of the
        context's kind built at the first call and kept."""
        from sdk.trainer import evaluation_sums

        if self.ctx.x_test is None or self.ctx.y_test is None:
            raise ValueError("this worker's context has no test set (x_test, y_test)")
        if self._eval_model is None:
            from ..models import build_model

            self._eval_model = build_model(self.ctx.model)
        x, y = self.ctx.x_test[lo:hi], self.ctx.y_test[lo:hi].astype(np.int64, copy=False)
        return evaluation_sums(self._eval_model, params, x, y, batch_size)

    def train(self, params: npt.NDArray[np.float32], jobs: Sequence[TrainJob]) -> list[JobResult]:
        if self.backend is not None:
            return self.backend.train(params, jobs)
        return [run_job(self.ctx, self._trainers, params, job) for job in jobs]


def split_jobs(jobs: Sequence[TrainJob], parts: int) -> list[list[int]]:
    """Positions of `jobs` dealt into at most `parts` shares of about equal work (examples).

    Greedy longest-first onto the least-loaded share; each share keeps its jobs in round order.
    """
    if parts < 1:
        raise ValueError("parts must be >= 1")
    loads = [0] * min(parts, max(len(jobs), 1))
    shares: list[list[int]] = [[] for _ in loads]
    for i in sorted(range(len(jobs)), key=lambda i: (-len(jobs[i].indices), i)):
        k = min(range(len(loads)), key=lambda j: (loads[j], j))
        shares[k].append(i)
        loads[k] += max(1, len(jobs[i].indices))
    return [sorted(s) for s in shares if s]
