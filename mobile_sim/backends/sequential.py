"""The inline sequential backend: one model, jobs trained one after the other."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from ..status import say
from ._base import (
    JobResult,
    TrainContext,
    TrainJob,
    check_round,
    job_rng,
    job_torch_seed,
    model_failed,
    num_params,
)

__all__ = ["SequentialBackend", "job_torch_rng", "run_job", "warm_torch", "warm_torch_trainer"]


def _torch_trainer(ctx: TrainContext) -> Any:
    from sdk.trainer import TorchTrainer

    from ..models import build_model

    return TorchTrainer(build_model(ctx.model), momentum=ctx.momentum)


def warm_torch() -> None:
    """Pay torch's one-time set-up now: the first optimizer a process builds imports
    torch._dynamo (1.5-3 s), and its first step a profiler module. One throwaway step on a
    tensor of its own: no model, no RNG draw, no data touched."""
    import torch

    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    (weight * weight).sum().backward()
    optimizer.step()  # its first call imports a profiler module too


def warm_torch_trainer(ctx: TrainContext) -> Any:
    """A torch trainer for `ctx`, with torch's one-time set-up paid now (`warm_torch`): a
    backend's `start` pays it instead of its first round's wall time."""
    trainer = _torch_trainer(ctx)
    warm_torch()
    return trainer


def _ort_trainer(ctx: TrainContext) -> Any:
    if ctx.ort_artifacts is None:
        raise ValueError("jobs on the ONNX runtime need TrainContext.ort_artifacts")
    from sdk.ort import OrtTrainer

    return OrtTrainer.from_dir(ctx.ort_artifacts)


@contextmanager
def job_torch_rng(job: TrainJob) -> Iterator[None]:
    """Torch's default (CPU) generator seeded with `job_torch_seed(job)` inside, and put back
    as it was after: a model's dropout draws the same masks for the job on every backend, in
    any worker, after any other job, and the caller's own torch draws are not disturbed.

    The generator's own `manual_seed`, not `torch.manual_seed`, which also looks for CUDA,
    MPS and XPU devices (0.16 ms a call against 2 us)."""
    import torch

    gen = torch.default_generator
    saved = gen.get_state()
    gen.manual_seed(job_torch_seed(job))
    try:
        yield
    finally:
        gen.set_state(saved)


def run_job(
    ctx: TrainContext,
    trainers: dict[str, Any],
    params: npt.NDArray[np.float32],
    job: TrainJob,
) -> JobResult:
    """Train one job with the trainer of its kind (built once and cached in `trainers`); a
    torch job under `job_torch_rng(job)`, so its dropout masks are its own."""
    trainer = trainers.get(job.trainer)
    if trainer is None:
        if job.trainer == "torch":
            trainer = _torch_trainer(ctx)
        elif job.trainer == "ort":
            trainer = _ort_trainer(ctx)
        else:
            raise ValueError(f"unknown trainer {job.trainer!r}")
        trainers[job.trainer] = trainer
    x = ctx.x_train[job.indices]
    y = ctx.y_train[job.indices]
    if job.data_attack is not None:
        x, y = job.data_attack.poison_data(x, y, job_rng(job, stream=1))
    # onnxruntime draws nothing from torch (which it may not even import)
    rng_scope = job_torch_rng(job) if job.trainer == "torch" else contextlib.nullcontext()
    try:
        with rng_scope:
            result = trainer.train(
                params,
                x,
                y,
                epochs=ctx.epochs,
                batch_size=ctx.batch_size,
                lr=ctx.lr,
                rng=job_rng(job),
            )
    except ValueError:
        raise  # worded by the SDK or the simulator (bad data, a diverged run)
    except Exception as exc:  # the model's own failure: one line, as a worker's is
        raise model_failed(f"training device {job.device_id} in round {job.round_id}", exc) from exc
    delta = (result.params - params).astype(np.float32)
    return JobResult(job.device_id, delta, result.num_examples, result.loss)


class SequentialBackend:
    """Trains jobs one by one in this process (the reference every other backend matches)."""

    name = "sequential"

    def __init__(self) -> None:
        self._ctx: TrainContext | None = None
        self._trainers: dict[str, Any] = {}
        self._size = 0  # the model's parameter count, for `check_round`

    def start(self, ctx: TrainContext) -> None:
        self._ctx = ctx
        # Built now, not in the first round: a bad model fails here, and round 1's wall time
        # does not include importing torch and its optimizer (as the pool's workers do).
        say("warming up torch")
        self._trainers = {"torch": warm_torch_trainer(ctx)}
        self._size = num_params(self._trainers["torch"].module)

    def train(self, params: npt.NDArray[np.float32], jobs: Sequence[TrainJob]) -> list[JobResult]:
        if self._ctx is None:
            raise RuntimeError("backend not started")
        check_round(params, jobs, len(self._ctx.y_train), size=self._size)
        return [run_job(self._ctx, self._trainers, params, job) for job in jobs]

    def close(self) -> None:
        self._trainers = {}
