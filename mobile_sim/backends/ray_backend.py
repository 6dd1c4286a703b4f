"""Ray backend: a round's jobs split over Ray actors, on this machine or a whole cluster.

`pip install .[ray]`. Without an address it starts a private local Ray runtime; with
``address="auto"``, an explicit ``ray://`` / ``host:port`` address or the ``RAY_ADDRESS``
environment variable it joins a running cluster (``ray start --head`` on one node,
``ray start --address=HEAD:6379`` on the others). Every node needs Plume installed, or pass
``runtime_env={"py_modules": [...]}``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ._base import JobResult, TrainContext, TrainJob
from ._worker import INNER_BACKENDS, WorkerState, split_jobs

__all__ = ["RayBackend"]


class RayBackend:
    """Trains each round's jobs on `workers` Ray actors (default: one per CPU Ray reports).

    The training context is put in Ray's object store once and each actor keeps it; each round
    puts the global params once and sends every actor its share of the jobs.
    """

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        inner: str = "sequential",
        threads_per_worker: int = 1,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError("workers must be >= 1")
        if inner not in INNER_BACKENDS:
            raise ValueError(f"inner backend must be one of {INNER_BACKENDS}, got {inner!r}")
        self.workers = workers
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.inner = inner
        self.threads_per_worker = threads_per_worker
        self.runtime_env = runtime_env
        self._actors: list[Any] = []
        self._owns_runtime = False

    def start(self, ctx: TrainContext) -> None:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError(
                "the Ray backend needs the optional extra: pip install 'plume-fl[ray]'"
            ) from exc
        self.close()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.runtime_env is not None:
                kwargs["runtime_env"] = self.runtime_env
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, **kwargs)
            self._owns_runtime = True
        n = self.workers or max(1, int(ray.available_resources().get("CPU", 1)))
        actor_cls = ray.remote(num_cpus=1)(WorkerState)
        ctx_ref = ray.put(ctx)
        self._actors = [
            actor_cls.remote(ctx_ref, self.inner, self.threads_per_worker) for _ in range(n)
        ]

    def train(self, params: npt.NDArray[np.float32], jobs: Sequence[TrainJob]) -> list[JobResult]:
        import ray

        if not self._actors:
            raise RuntimeError("backend not started")
        shares = split_jobs(jobs, len(self._actors))
        params_ref = ray.put(params)
        refs = [
            actor.train.remote(params_ref, [jobs[i] for i in share])
            for actor, share in zip(self._actors, shares, strict=False)
        ]
        results: list[JobResult | None] = [None] * len(jobs)
        for share, out in zip(shares, ray.get(refs), strict=True):
            for i, res in zip(share, out, strict=True):
                results[i] = res
        return [r for r in results if r is not None]

    def close(self) -> None:
        if not self._actors and not self._owns_runtime:
            return
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._owns_runtime:
            ray.shutdown()
            self._owns_runtime = False
