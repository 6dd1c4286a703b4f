"""RayBackend's address forms as rounds.json's `ray_cluster` and ray.init see them.

"local" (given or in RAY_ADDRESS) is Ray's private runtime ("start a new local Ray instance,
even if there is already an existing local Ray instance", ray.init's docstring): it records no
cluster and starts as without an address. "auto" records the GCS address of the cluster Ray
found once ray.init has returned it. An address is stripped, and a blank one is unset, as Ray
reads an empty RAY_ADDRESS. Joining a cluster keeps Ray's WARNING lines (logging_level=WARNING);
a private runtime shows only its errors. No Ray runtime is started: `ray.init` is stood in for.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mobile_sim.backends import TrainContext
from mobile_sim.backends.ray_backend import RayBackend

HEAD = "10.0.0.5:6379"


class _Stop(Exception):
    """Raised by the stand-in `ray.available_resources`, once ray.init has returned."""


def _ctx() -> TrainContext:
    return TrainContext(
        "digits_mlp", np.zeros((4, 64), np.float32), np.zeros(4, np.int64), 1, 2, 0.1
    )


def _start(
    monkeypatch: pytest.MonkeyPatch, backend: RayBackend, joined: object = None
) -> dict[str, Any]:
    """ray.init's keyword arguments when `backend` starts (ray.init returning `joined`); the
    start stops right after it, before any actor. No address is checked for a TCP answer."""
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    seen: dict[str, Any] = {}

    def fake_init(**kwargs: Any) -> object:
        seen.update(kwargs)
        return joined

    def stop(*_a: Any, **_k: Any) -> None:
        raise _Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "available_resources", stop)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr("mobile_sim.backends.ray_backend.check_reachable", lambda *_a: None)
    with pytest.raises(_Stop):
        backend.start(_ctx())
    return seen


def _context(gcs_address: object) -> SimpleNamespace:
    """What ray.init returns on joining a cluster (a RayContext): its `address_info`."""
    return SimpleNamespace(address_info={"gcs_address": gcs_address, "address": "ignored"})


@pytest.mark.parametrize("how", ["environment", "argument"])
def test_local_is_a_private_runtime_not_a_cluster(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # Prepare
    if how == "environment":
        monkeypatch.setenv("RAY_ADDRESS", "local")
        backend = RayBackend(workers=1, num_cpus=1)
    else:
        monkeypatch.setenv("RAY_ADDRESS", HEAD)  # a given address wins, "local" too
        backend = RayBackend(workers=1, num_cpus=1, address="local")
    # Execute / Assert: nothing recorded before or after the start, which is the private
    # runtime's (this machine's CPUs, Ray's errors only), not a join
    assert backend.cluster is None
    seen = _start(monkeypatch, backend)
    assert seen["address"] == "local"
    assert seen["num_cpus"] == 1
    assert seen["logging_level"] == logging.ERROR
    assert backend.cluster is None


@pytest.mark.parametrize("how", ["environment", "argument"])
def test_auto_records_the_cluster_ray_found(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    # Prepare
    if how == "environment":
        monkeypatch.setenv("RAY_ADDRESS", "auto")
        backend, source = RayBackend(workers=1), "RAY_ADDRESS"
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        backend, source = RayBackend(workers=1, address="auto"), "ray_address"
    assert backend.cluster == {"address": "auto", "from": source}  # before start: as given
    # Execute
    seen = _start(monkeypatch, backend, joined=_context("10.0.0.9:6379"))
    # Assert: ray.init got "auto"; the record names what it resolved to
    assert seen["address"] == "auto"
    assert backend.cluster == {"address": "10.0.0.9:6379", "from": source}


@pytest.mark.parametrize(
    "joined",
    [None, SimpleNamespace(), _context(None), _context(""), _context(6379)],
    ids=["nothing", "a client's context", "no gcs_address", "empty", "not a string"],
)
def test_auto_stays_as_given_when_ray_does_not_say(
    monkeypatch: pytest.MonkeyPatch, joined: object
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    backend = RayBackend(workers=1)
    _start(monkeypatch, backend, joined=joined)
    assert backend.cluster == {"address": "auto", "from": "RAY_ADDRESS"}


def test_a_concrete_address_is_recorded_as_given_not_as_ray_resolved_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray's context says the GCS address it dialled (a host name as an IP); the record keeps
    # the address the user named, the one they can compare with their command.
    monkeypatch.setenv("RAY_ADDRESS", "head.example:6379")
    backend = RayBackend(workers=1)
    _start(monkeypatch, backend, joined=_context("10.0.0.9:6379"))
    assert backend.cluster == {"address": "head.example:6379", "from": "RAY_ADDRESS"}


def test_a_new_start_forgets_the_cluster_auto_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    backend = RayBackend(workers=1)
    _start(monkeypatch, backend, joined=_context("10.0.0.9:6379"))
    _start(monkeypatch, backend, joined=None)
    assert backend.cluster == {"address": "auto", "from": "RAY_ADDRESS"}


@pytest.mark.parametrize(
    ("env", "given", "address", "cluster"),
    [
        ("", None, None, None),  # an empty RAY_ADDRESS is unset, as Ray reads it
        ("   ", None, None, None),  # so is a blank one (Ray: "Invalid address format")
        ("\t10.0.0.5:6379\n", None, HEAD, {"address": HEAD, "from": "RAY_ADDRESS"}),
        (" local ", None, "local", None),
        (" auto", None, "auto", {"address": "auto", "from": "RAY_ADDRESS"}),
        (None, " 10.0.0.7:6379 ", "10.0.0.7:6379", {"address": "10.0.0.7:6379", "from": "ray_address"}),
        (HEAD, "", HEAD, {"address": HEAD, "from": "RAY_ADDRESS"}),  # "" given: not given
        (HEAD, "  ", HEAD, {"address": HEAD, "from": "RAY_ADDRESS"}),  # nor is a blank one
        ("  ", "  ", None, None),
    ],
)  # fmt: skip
def test_addresses_are_stripped_and_blank_is_unset(
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    given: str | None,
    address: str | None,
    cluster: dict[str, str] | None,
) -> None:
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    backend = RayBackend(workers=1, address=given)
    assert backend.address == address
    assert backend.cluster == cluster


def test_a_padded_address_reaches_ray_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray took " 10.0.0.5:6379" whole: a host named " 10.0.0.5"
    monkeypatch.setenv("RAY_ADDRESS", f" {HEAD}\n")
    seen = _start(monkeypatch, RayBackend(workers=1))
    assert seen["address"] == HEAD


def test_a_blank_ray_address_starts_the_private_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not Ray's own reading of the variable: "local" is passed, which Ray takes over it
    monkeypatch.setenv("RAY_ADDRESS", "  ")
    seen = _start(monkeypatch, RayBackend(workers=1, num_cpus=1))
    assert seen["address"] == "local" and seen["num_cpus"] == 1


@pytest.mark.parametrize("address", [HEAD, "auto", "ray://head.example:10001"])
@pytest.mark.parametrize("how", ["environment", "argument"])
def test_joining_a_cluster_keeps_rays_warnings(
    monkeypatch: pytest.MonkeyPatch, address: str, how: str
) -> None:
    # Ray's WARNING lines on joining (InvalidAuthToken, ...) say why a join fails, so the
    # driver's "ray" logger is set to WARNING for a cluster (ERROR only for a private
    # runtime, whose token-auth warning is about a cluster only this process uses), and the
    # cluster's CPUs are its own (no num_cpus).
    if how == "environment":
        monkeypatch.setenv("RAY_ADDRESS", address)
        backend = RayBackend(workers=1, num_cpus=1)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        backend = RayBackend(workers=1, num_cpus=1, address=address)
    seen = _start(monkeypatch, backend)
    assert seen["address"] == address
    assert seen["logging_level"] == logging.WARNING
    assert "num_cpus" not in seen
    assert seen["log_to_driver"] is False and seen["include_dashboard"] is False


def test_without_an_address_only_rays_errors_are_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    seen = _start(monkeypatch, RayBackend(workers=1, num_cpus=1))
    assert seen["address"] == "local" and seen["logging_level"] == logging.ERROR
