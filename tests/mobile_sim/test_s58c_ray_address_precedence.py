"""Which Ray address a run uses when --ray-address and RAY_ADDRESS are both set, and the
--workers check of a private runtime (stop 58, helper-58c).

1. A given address wins over RAY_ADDRESS, "auto" too. ray.init itself reads RAY_ADDRESS for
   address="auto" (`ray._private.worker.init`: "use RAY_ADDRESS to override if the address
   was left unspecified, or set to 'auto'"), so `--ray-address auto` joined RAY_ADDRESS's
   cluster (a ``ray://`` client, or "local": a private runtime), while rounds.json's
   `ray_cluster` said "auto" given by --ray-address. The backend now calls ray.init("auto")
   without RAY_ADDRESS in the environment (put back after), so "auto" is the cluster on this
   machine and the record is the one joined.
2. A private runtime ("local", given or in RAY_ADDRESS, or no address) gets this machine's
   CPUs, so `plume sim` checks --workers against them with its other flags, before data is
   loaded or Ray started; before, no address and "local" alike failed only in RayBackend.start,
   after Ray had started. A cluster's CPUs are still checked when it is joined.

No Ray runtime is started: `ray.init` is stood in for.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim.backends import TrainContext
from mobile_sim.backends.ray_backend import RayBackend, is_private, resolve_address

HEAD = "10.0.0.5:6379"
TINY = [
    "sim", "--dataset", "digits", "--clients", "4", "--per-round", "2", "--rounds", "1",
    "--local-epochs", "1", "--no-progress", "--backend", "ray",
]  # fmt: skip


class _Stop(Exception):
    """Raised by a stand-in once the part under test has run."""


def _ray() -> Any:
    return pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")


def _ctx() -> TrainContext:
    return TrainContext(
        "digits_mlp", np.zeros((4, 64), np.float32), np.zeros(4, np.int64), 1, 2, 0.1
    )


def _start(monkeypatch: pytest.MonkeyPatch, backend: RayBackend, init: Any) -> None:
    """Start `backend` with `init` for ray.init; the start stops right after ray.init."""
    ray = _ray()

    def stop(*_a: Any, **_k: Any) -> None:
        raise _Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "available_resources", stop)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr("mobile_sim.backends.ray_backend.check_reachable", lambda *_a: None)
    with pytest.raises(_Stop):
        backend.start(_ctx())


@pytest.mark.parametrize(
    ("given", "env", "address", "source"),
    [
        ("auto", HEAD, "auto", "RayBackend(address=...)"),
        ("local", HEAD, "local", "RayBackend(address=...)"),
        (HEAD, "local", HEAD, "RayBackend(address=...)"),
        (" auto ", "ray://head.example:10001", "auto", "RayBackend(address=...)"),
        (None, HEAD, HEAD, "RAY_ADDRESS"),
        ("  ", "auto", "auto", "RAY_ADDRESS"),  # a blank address is no address
        (None, None, None, "RAY_ADDRESS"),
    ],
)
def test_a_given_address_wins_over_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    given: str | None,
    env: str | None,
    address: str | None,
    source: str,
) -> None:
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    assert resolve_address(given) == (address, source)
    backend = RayBackend(workers=1, address=given)
    assert (backend.address, backend._address_source) == (address, source)


@pytest.mark.parametrize(
    ("address", "private"),
    [(None, True), ("local", True), ("auto", False), (HEAD, False), ("ray://h:10001", False)],
)
def test_is_private(address: str | None, private: bool) -> None:
    assert is_private(address) is private


@pytest.mark.parametrize("env", [HEAD, "ray://head.example:10001", "local"])
def test_a_given_auto_is_not_overridden_by_ray_address(
    monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    # Prepare: RAY_ADDRESS names another cluster (or a private runtime); auto is given
    monkeypatch.setenv("RAY_ADDRESS", env)
    seen: dict[str, Any] = {}

    def init(**kwargs: Any) -> object:
        seen.update(kwargs, variable=os.environ.get("RAY_ADDRESS"))
        return SimpleNamespace(address_info={"gcs_address": "10.0.0.9:6379"})

    backend = RayBackend(workers=1, address="auto")
    # Execute
    _start(monkeypatch, backend, init)
    # Assert: ray.init got "auto" with no RAY_ADDRESS to read instead, the variable is back
    # afterwards, and the record is the cluster that ray.init joined, given by the flag
    assert seen["address"] == "auto" and seen["variable"] is None
    assert os.environ["RAY_ADDRESS"] == env
    assert backend.cluster == {"address": "10.0.0.9:6379", "from": "ray_address"}


def test_the_variable_is_put_back_when_ray_init_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", HEAD)

    def init(**kwargs: Any) -> object:
        raise RuntimeError("ray.init failed")

    ray = _ray()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(RuntimeError, match="ray.init failed"):
        RayBackend(workers=1, address="auto").start(_ctx())
    assert os.environ["RAY_ADDRESS"] == HEAD


@pytest.mark.parametrize("address", [HEAD, "ray://head.example:10001"])
def test_a_concrete_address_leaves_the_variable_alone(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    # ray.init reads RAY_ADDRESS only for None and "auto": a concrete address needs no change
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.8:6379")
    seen: dict[str, Any] = {}

    def init(**kwargs: Any) -> object:
        seen.update(kwargs, variable=os.environ.get("RAY_ADDRESS"))
        return None

    _start(monkeypatch, RayBackend(workers=1, address=address), init)
    assert seen["address"] == address and seen["variable"] == "10.0.0.8:6379"


def test_rays_own_auto_reads_the_variable_and_the_backend_keeps_it_out() -> None:
    # The reason for the change, in Ray's own code (no runtime is started): ray.init resolves
    # "auto" through canonicalize_bootstrap_address, which takes RAY_ADDRESS over "auto".
    _ray()
    from ray._private import services

    from mobile_sim.backends.ray_backend import _no_ray_address_variable

    elsewhere = "10.255.255.1:6379"  # a cluster no test here runs
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ADDRESS", elsewhere)
        assert services.canonicalize_bootstrap_address("auto") == elsewhere
        with _no_ray_address_variable():
            try:  # a cluster or private runtime running on this machine, or none at all
                found = services.canonicalize_bootstrap_address("auto")
            except ConnectionError:
                found = None
        assert found != elsewhere
        assert os.environ["RAY_ADDRESS"] == elsewhere


@pytest.mark.parametrize("env", [HEAD, None])
def test_auto_with_no_cluster_here_is_one_line(
    monkeypatch: pytest.MonkeyPatch, env: str | None
) -> None:
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)

    def init(**kwargs: Any) -> object:  # Ray 2.60's words (services.py)
        raise ConnectionError(
            "Could not find any running Ray instance. Please specify the one to connect to by "
            "setting `--address` flag or `RAY_ADDRESS` environment variable."
        )

    ray = _ray()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(ConnectionError) as info:
        RayBackend(workers=1, address="auto").start(_ctx())
    text = str(info.value)
    assert text.startswith(
        "cannot find a Ray cluster on this machine for address auto (given by "
        "RayBackend(address=...)): "
        "none is running here; start one (ray start --head) or give the cluster's address"
    )
    assert "; a given auto does not read RAY_ADDRESS (without" in text
    assert "Could not find" not in text


def test_auto_from_the_variable_with_no_cluster_does_not_speak_of_a_given_auto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "auto")

    def init(**kwargs: Any) -> object:
        raise ConnectionError("Could not find any running Ray instance. Please specify ...")

    ray = _ray()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(ConnectionError, match=r"\(given by RAY_ADDRESS\)") as info:
        RayBackend(workers=1).start(_ctx())
    assert "a given auto" not in str(info.value)


# --- plume sim -----------------------------------------------------------------------------


def _sim(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    env: str | None,
) -> tuple[int | None, str, list[dict[str, Any]]]:
    """`plume sim` with `flags`, RAY_ADDRESS=`env` and 2 usable CPUs: its exit status, its
    stderr, and each ray.init call (a stand-in that stops the run at once)."""
    ray = _ray()
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    monkeypatch.setattr("mobile_sim.backends._base.usable_cpus", lambda: 2)
    calls: list[dict[str, Any]] = []

    def init(**kwargs: Any) -> object:
        calls.append(kwargs)
        raise _Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr("mobile_sim.backends.ray_backend.check_reachable", lambda *_a: None)
    code: int | None
    try:
        code = plume([*TINY, "--out", str(tmp_path / "run"), *flags])
    except _Stop:
        code = None
    return code, capsys.readouterr().err, calls


@pytest.mark.parametrize(
    ("flags", "env", "how"),
    [
        ([], None, "no --ray-address and no RAY_ADDRESS"),
        (["--ray-address", "local"], None, "--ray-address local"),
        (["--ray-address", " local "], HEAD, "--ray-address local"),  # the flag wins
        ([], "local", "RAY_ADDRESS=local"),
    ],
)
def test_a_private_runtime_checks_workers_before_starting_ray(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    env: str | None,
    how: str,
) -> None:
    code, err, calls = _sim(tmp_path, capsys, monkeypatch, ["--workers", "9", *flags], env)
    assert code == 2, err
    assert calls == []  # Ray was never started
    lines = [line for line in err.splitlines() if line.startswith("plume sim: error:")]
    assert lines == [
        "plume sim: error: --workers must be at most 4 per CPU of this machine for a private "
        "Ray runtime (8 with its 2 CPUs), got 9: more only take turns on the same CPUs, each a "
        f"process that imports torch ({how}: Ray starts on this machine's CPUs)"
    ]
    assert not (tmp_path / "run" / "rounds.json").exists()


@pytest.mark.parametrize(
    ("flags", "env", "address"),
    [
        (["--workers", "8"], None, "local"),  # fits: 4 per CPU of 2
        (["--workers", "8", "--ray-address", "local"], HEAD, "local"),
        (["--workers", "9", "--ray-address", HEAD], None, HEAD),  # a cluster: its own CPUs
        (["--workers", "9", "--ray-address", HEAD], "local", HEAD),  # the flag wins
        (["--workers", "9"], HEAD, HEAD),
        (["--workers", "9", "--ray-address", "auto"], None, "auto"),
    ],
)
def test_a_cluster_or_a_fitting_count_goes_on_to_start_ray(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    env: str | None,
    address: str,
) -> None:
    code, err, calls = _sim(tmp_path, capsys, monkeypatch, flags, env)
    assert code is None, err  # stopped in ray.init, past the usage checks
    assert [call["address"] for call in calls] == [address]
    assert "--workers must be" not in err


def test_over_1024_workers_keeps_simconfigs_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err, calls = _sim(tmp_path, capsys, monkeypatch, ["--workers", "1025"], None)
    assert code == 2 and calls == []
    assert "--workers must be at most 1024 (pool and ray), got 1025" in err


def test_auto_with_no_cluster_here_is_one_cli_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = _ray()
    monkeypatch.setenv("RAY_ADDRESS", HEAD)

    def init(**kwargs: Any) -> object:
        assert "RAY_ADDRESS" not in os.environ
        raise ConnectionError("Could not find any running Ray instance. Please specify ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    code = plume([*TINY, "--out", str(tmp_path / "run"), "--ray-address", "auto"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("plume sim: error:")]
    assert code == 1 and "Traceback" not in err, err
    assert lines == [
        "plume sim: error: cannot find a Ray cluster on this machine for address auto (given "
        "by --ray-address): none is running here; start one (ray start --head) or give the "
        "cluster's address; a given auto does not read RAY_ADDRESS (without --ray-address or "
        "RAY_ADDRESS, plume starts a private local Ray runtime)"
    ]
