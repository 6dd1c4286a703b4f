"""`RayBackend(runtime_env=...)` is no longer dropped when the caller started the Ray runtime
(helper-191: it went only to the backend's own ray.init, so with `ray.init` called first, as
docs/simulator.md shows, it was silently ignored). In the caller's runtime it goes to the
actors' options; local py_modules/working_dir, which Ray uploads only for ray.init's
runtime_env, are refused in one line. No Ray runtime is started: the calls are recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import mobile_sim
from mobile_sim.backends.ray_backend import RayBackend
from tests.mobile_sim.test_h192_ray_address import tiny_context


class _Ready:
    def remote(self) -> str:
        return "ready"


class _Actor:
    __ray_ready__ = _Ready()


def _start(
    runtime_env: dict[str, Any] | None,
    monkeypatch: pytest.MonkeyPatch,
    *,
    initialized: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ray.remote's options, ray.init's keyword arguments) of one start/close."""
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    options: list[dict[str, Any]] = []
    inits: list[dict[str, Any]] = []
    state = {"up": initialized}

    def init(**kwargs: Any) -> None:
        inits.append(kwargs)
        state["up"] = True

    def remote(**kwargs: Any) -> Any:
        options.append(kwargs)
        return lambda cls: type("ActorClass", (), {"remote": staticmethod(lambda *a: _Actor())})

    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: state.update(up=False))
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "remote", remote)
    monkeypatch.setattr(ray, "put", lambda value: "ref")
    monkeypatch.setattr(ray, "get", lambda refs, timeout=None: refs)
    monkeypatch.setattr(ray, "kill", lambda actor: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ctx = tiny_context()
    backend = RayBackend(workers=2, runtime_env=runtime_env)
    try:
        backend.start(ctx)
    finally:
        backend.close()
    return options, inits


def test_runtime_env_goes_to_the_actors_in_a_runtime_the_caller_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"env_vars": {"OMP_NUM_THREADS": "1"}, "py_modules": ["s3://bucket/plume.zip"]}
    options, inits = _start(env, monkeypatch)
    assert (options, inits) == ([{"num_cpus": 1.0, "runtime_env": env}], [])


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"py_modules": [mobile_sim]}, "mobile_sim"),
        ({"py_modules": ["/opt/plume/sdk"]}, "/opt/plume/sdk"),
        ({"working_dir": Path("/opt/plume")}, "/opt/plume"),
    ],
)
def test_local_modules_in_the_callers_runtime_are_refused(
    env: dict[str, Any], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="give the runtime_env to that ray.init") as info:
        _start(env, monkeypatch)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_the_backends_own_runtime_takes_it_in_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"py_modules": [mobile_sim]}  # local modules: fine at the job level
    options, inits = _start(env, monkeypatch, initialized=False)
    assert options == [{"num_cpus": 1.0}]
    assert [i.get("runtime_env") for i in inits] == [env]


def test_no_runtime_env_leaves_the_actor_options_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _start(None, monkeypatch) == ([{"num_cpus": 1.0}], [])
