"""The backend seam: how a batch of local-training jobs gets run (inline, pool, Ray, ...)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["TrainContext", "TrainJob", "JobResult", "Backend", "job_rng", "check_round"]


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

    def __post_init__(self) -> None:
        # Before, epochs or batch_size <= 0 trained nothing on one backend and failed inside
        # torch on another, and a negative lr was refused by torch's SGD but used (as gradient
        # ascent) by the vectorized backend: refuse them here, for every backend alike.
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.lr, numbers.Real) and 0 < self.lr < math.inf):
            raise ValueError(f"lr must be finite and > 0, got {self.lr!r}")
        # Any finite momentum >= 0, as torch's SGD and `plume sim --momentum` take.
        if not (isinstance(self.momentum, numbers.Real) and 0 <= self.momentum < math.inf):
            raise ValueError(f"momentum must be finite and >= 0, got {self.momentum!r}")
        x, y = self.x_train, self.y_train
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            if y.ndim != 1 or len(x) != len(y):
                raise ValueError(
                    f"y_train must be 1-D with one label per x_train row, got shapes "
                    f"{x.shape} and {y.shape}"
                )
            if y.size and not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"y_train must hold integer class labels, got {y.dtype}")


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


def check_round(params: npt.NDArray[Any], jobs: Sequence[TrainJob], num_examples: int) -> None:
    """Refuse a round before any training: `params` must be a 1-D float array (float32[d]) and
    every job's `indices` a non-empty 1-D integer array in [0, num_examples).

    Without it a negative index silently trained on an example counted from the end (another
    device's), and the rest failed deep inside torch or numpy (in a pool worker, as a traceback
    that also stopped the pool)."""
    if not (isinstance(params, np.ndarray) and params.ndim == 1):
        raise ValueError(f"params must be a 1-D array (float32[d]), got shape {np.shape(params)}")
    if not np.issubdtype(params.dtype, np.floating):
        raise ValueError(f"params must be floating point, got {params.dtype}")
    for job in jobs:
        idx = np.asarray(job.indices)
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(
                f"device {job.device_id}: indices must be a 1-D integer array, got "
                f"{idx.dtype} of shape {idx.shape}"
            )
        if idx.size == 0:
            raise ValueError(
                f"device {job.device_id}: a device needs at least one example to train"
            )
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= num_examples:
            raise ValueError(
                f"device {job.device_id}: example indices must be in [0, {num_examples}), got "
                f"range [{lo}, {hi}]"
            )
