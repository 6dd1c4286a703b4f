"""`--workers` / `workers=` has an upper bound (helper-210: SimConfig(backend="pool",
workers=10**6) was accepted and `start` would spawn that many processes, each importing torch;
on Ray, past ~10^4 actors per CPU each actor's CPU share rounded to 0). At most 1024 workers
for both backends (SimConfig and both constructors); the pool at most 4 per CPU of this
machine, Ray at most 4 per CPU of the cluster (checked when it starts). No process or Ray
runtime is started here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim import _cli
from mobile_sim.backends import process_pool, ray_backend
from mobile_sim.backends.process_pool import ProcessPoolBackend
from mobile_sim.backends.ray_backend import RayBackend
from mobile_sim.runner import SimConfig, backend_for
from tests.mobile_sim.test_h192_ray_address import tiny_context
from tests.mobile_sim.test_h206_backend_flags import _error_line

TINY = [
    "sim", "--dataset", "digits", "--clients", "4", "--per-round", "2", "--rounds", "1",
    "--local-epochs", "1", "--no-progress",
]  # fmt: skip


@pytest.mark.parametrize("backend", ["pool", "ray"])
def test_simconfig_refuses_more_than_1024_workers(backend: str) -> None:
    with pytest.raises(ValueError, match=r"^workers must be at most 1024 \(pool and ray\), got "):
        SimConfig(backend=backend, workers=10**6)
    with pytest.raises(ValueError, match="got 1025"):
        SimConfig(backend=backend, workers=1025)
    assert SimConfig(backend=backend, workers=1024).workers == 1024


@pytest.mark.parametrize("cls", [ProcessPoolBackend, RayBackend])
def test_the_constructors_refuse_more_than_1024_workers(cls: Any) -> None:
    with pytest.raises(ValueError, match=r"^workers must be at most 1024 \(pool and ray\), got "):
        cls(workers=10**6)


def test_the_pool_takes_at_most_4_workers_per_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert ProcessPoolBackend(workers=8).workers == 8  # built, not started
    with pytest.raises(ValueError) as info:
        ProcessPoolBackend(workers=9)
    assert str(info.value).startswith(
        "workers must be at most 4 per CPU of this machine for the pool (8 with its 2 CPUs), "
        "got 9: "
    )
    # from a config too (SimConfig takes it: the machine that runs it may have more CPUs)
    with pytest.raises(ValueError, match="at most 4 per CPU of this machine"):
        backend_for(SimConfig(backend="pool", workers=9))


def test_the_bound_is_the_one_help_names() -> None:
    assert process_pool.MAX_WORKERS == _cli._MAX_WORKERS == 1024
    assert process_pool.WORKERS_PER_CPU == _cli._WORKERS_PER_CPU == 4


def _ray_start(
    workers: int | None, cluster_cpus: float, monkeypatch: pytest.MonkeyPatch
) -> tuple[RayBackend, list[dict[str, Any]], list[bool]]:
    """Start a RayBackend in a stand-in runtime of `cluster_cpus` CPUs, all free: the backend,
    ray.remote's options for each start that got that far, and each ray.shutdown."""
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    options: list[dict[str, Any]] = []
    shutdowns: list[bool] = []
    state = {"up": False}

    class _Ready:
        def remote(self) -> str:
            return "ready"

    class _Actor:
        __ray_ready__ = _Ready()

    def remote(**kwargs: Any) -> Any:
        options.append(kwargs)
        return lambda cls: type("ActorClass", (), {"remote": staticmethod(lambda *a: _Actor())})

    def shutdown() -> None:
        shutdowns.append(True)
        state["up"] = False

    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray, "init", lambda **kwargs: state.update(up=True))
    monkeypatch.setattr(ray, "shutdown", shutdown)
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": cluster_cpus})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": cluster_cpus})
    monkeypatch.setattr(ray, "remote", remote)
    monkeypatch.setattr(ray, "put", lambda value: "ref")
    monkeypatch.setattr(ray, "get", lambda refs, timeout=None: refs)
    monkeypatch.setattr(ray, "kill", lambda actor: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    backend = RayBackend(workers=workers)
    backend.start(tiny_context())
    return backend, options, shutdowns


def test_ray_takes_at_most_4_workers_per_cpu_of_the_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 8 actors on 2 CPUs: a quarter of a CPU each (placed, as before)
    backend, options, _ = _ray_start(8, 2.0, monkeypatch)
    assert options == [{"num_cpus": 0.25}] and len(backend._actors) == 8
    backend.close()

    # 9: refused before any actor is made, and the runtime the backend started is shut down
    with pytest.raises(ValueError) as info:
        _ray_start(9, 2.0, monkeypatch)
    assert str(info.value).startswith(
        "workers must be at most 4 per CPU of the Ray cluster (8 with its 2 CPUs), got 9: "
    )


def test_ray_refuses_before_making_actors_and_shuts_its_runtime_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    made: list[bool] = []
    monkeypatch.setattr(ray, "remote", lambda **kwargs: made.append(True))
    state = {"up": False}
    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray, "init", lambda **kwargs: state.update(up=True))
    monkeypatch.setattr(ray, "shutdown", lambda: state.update(up=False))
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    backend = RayBackend(workers=5)
    with pytest.raises(ValueError, match="at most 4 per CPU of the Ray cluster"):
        backend.start(tiny_context())
    assert made == [] and not state["up"] and not backend._owns_runtime


def test_rays_default_is_one_actor_per_free_cpu_at_most_1024(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend, options, _ = _ray_start(None, 5000.0, monkeypatch)
    assert len(backend._actors) == 1024 and options == [{"num_cpus": 1.0}]
    backend.close()
    backend, _, _ = _ray_start(None, 3.0, monkeypatch)
    assert len(backend._actors) == 3
    backend.close()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--backend", "pool", "--workers", "1000000"],
            "plume sim: error: --workers must be at most 1024 (pool and ray), got 1000000: ",
        ),
        (
            ["--backend", "ray", "--workers", "1025"],
            "plume sim: error: --workers must be at most 1024 (pool and ray), got 1025: ",
        ),
        (
            ["--backend", "pool", "--workers", "9"],
            "plume sim: error: --workers must be at most 4 per CPU of this machine for the pool "
            "(8 with its 2 CPUs), got 9: ",
        ),
    ],
)
def test_the_cli_refuses_too_many_workers_in_one_line(
    flags: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: a 2-CPU machine; a pool that would start fails the test
    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    def start(self: Any, ctx: Any) -> None:
        raise AssertionError("the pool was started")

    monkeypatch.setattr(ProcessPoolBackend, "start", start)
    monkeypatch.setattr(ray_backend.RayBackend, "start", start)

    # Execute
    code = plume([*TINY, *flags, "--out", str(tmp_path / "run")])

    # Assert: a usage error, one line, and no folder left behind
    assert code == 2
    assert _error_line(capsys.readouterr().err).startswith(expected)
    assert not (tmp_path / "run").exists()


def test_help_gives_the_bound(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        plume(["sim", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "at most 1024, and at most 4 per CPU (the pool: of this machine; Ray: of the cluster"
        in text
    )
