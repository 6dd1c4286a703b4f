"""The backend seam: how a batch of local-training jobs gets run (inline, pool, Ray, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["TrainContext", "TrainJob", "JobResult", "Backend", "job_rng"]


@dataclass(frozen=True)
class TrainContext:
    """Everything a worker needs once: the model, the training pool, the local-SGD settings.

    x_train: float32[N, ...]; y_train: int64[N]. `ort_artifacts` is a directory written by
    `plume export`, used by jobs whose `trainer` is "ort".
    """

    model: str
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    ort_artifacts: str | None = None


@dataclass(frozen=True)
class TrainJob:
    """One device's local training in one round. `indices` select its examples.

    `data_attack` (if any) poisons the device's data before training (label flip, backdoor).
    """

    device_id: str
    device_index: int
    round_id: int
    seed: int
    indices: npt.NDArray[np.int64]
    trainer: str = "torch"
    data_attack: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    """delta = trained - global, float32[d]; `num_examples` is the FedAvg weight."""

    device_id: str
    delta: npt.NDArray[np.float32]
    num_examples: int
    loss: float


class Backend(Protocol):
    name: str

    def start(self, ctx: TrainContext) -> None: ...

    def train(self, params: npt.NDArray[np.float32], jobs: Sequence[TrainJob]) -> list[JobResult]:
        """Results in the order of `jobs`; identical for the same seeds on every backend."""
        ...

    def close(self) -> None: ...


def job_rng(job: TrainJob, stream: int = 0) -> np.random.Generator:
    """The job's own RNG, from (seed, round, device, stream): no state shared between jobs, so
    every backend, in any order, draws the same numbers for the same job."""
    return np.random.default_rng([job.seed, job.round_id, job.device_index, stream])
