"""Simulation backends: where local training runs. `build_backend(name)` picks one."""

from __future__ import annotations

import importlib
from typing import Any

from ._base import Backend, JobResult, TrainContext, TrainJob, job_rng
from .sequential import SequentialBackend, run_job

__all__ = [
    "Backend",
    "JobResult",
    "TrainContext",
    "TrainJob",
    "SequentialBackend",
    "BACKENDS",
    "build_backend",
    "job_rng",
    "run_job",
]

# name -> "module:Class"; modules are imported on demand so optional ones (Ray) cost nothing.
BACKENDS: dict[str, str] = {
    "sequential": "mobile_sim.backends.sequential:SequentialBackend",
    "vectorized": "mobile_sim.backends.vectorized:VectorizedBackend",
    "pool": "mobile_sim.backends.process_pool:ProcessPoolBackend",
    "ray": "mobile_sim.backends.ray_backend:RayBackend",
}


def build_backend(name: str, **kwargs: Any) -> Backend:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"backend {name!r} is not available: {exc}") from exc
    backend: Backend = getattr(module, cls_name)(**kwargs)
    return backend
