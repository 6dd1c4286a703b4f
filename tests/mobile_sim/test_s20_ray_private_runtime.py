"""RayBackend without an address starts a private runtime, even when `ray start` runs a
cluster on this machine: a bare `ray.init()` joins the cluster /tmp/ray/ray_current_cluster
names (Ray's address resolution), and then refuses `num_cpus` ("When connecting to an existing
cluster, num_cpus ... must not be provided"). `address="local"` is Ray's private runtime."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mobile_sim.backends import TrainContext
from mobile_sim.backends.ray_backend import RayBackend

ray = pytest.importorskip("ray")


class _Stop(Exception):
    """Raised by the stand-in `ray.init` once it has recorded its arguments."""


def _init_kwargs(monkeypatch: pytest.MonkeyPatch, backend: RayBackend) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fake_init(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    ctx = TrainContext(
        "digits_mlp", np.zeros((4, 64), np.float32), np.zeros(4, np.int64), 1, 2, 0.1
    )
    with pytest.raises(_Stop):
        backend.start(ctx)
    return seen


def test_without_an_address_the_runtime_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    seen = _init_kwargs(monkeypatch, RayBackend(workers=1, num_cpus=1))
    assert seen["address"] == "local" and seen["num_cpus"] == 1


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_an_address_joins_that_cluster(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "environment":
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
        backend = RayBackend(workers=1)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        backend = RayBackend(workers=1, address="10.0.0.5:6379")
    seen = _init_kwargs(monkeypatch, backend)
    assert seen["address"] == "10.0.0.5:6379" and "num_cpus" not in seen
