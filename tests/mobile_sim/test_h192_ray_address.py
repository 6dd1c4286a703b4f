"""A Ray address nothing listens on fails `RayBackend.start` at once, in one line that names the
address and where it came from, before Ray is started (helper-191: ray.init retried such an
address for minutes and took 33 s to give up on Ctrl-C). No Ray runtime is started here."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from mobile_sim.backends import TrainContext
from mobile_sim.backends.ray_backend import RayBackend, check_reachable
from tests.coordinator.test_service_support import refused_url
from tests.mobile_sim.test_s46_ray_not_grpc import grpc_like, service


def tiny_context() -> TrainContext:
    """A digits_mlp context over 8 random examples (seed 0): enough to start a backend."""
    rng = np.random.default_rng(0)
    return TrainContext(
        "digits_mlp",
        rng.standard_normal((8, 64)).astype(np.float32),
        rng.integers(0, 10, 8).astype(np.int64),
        epochs=1,
        batch_size=4,
        lr=0.1,
    )


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on, held (bound, not listening) while the test runs so
    that no other process's server can take it (test_service_support.refused_url)."""
    with refused_url() as url:
        yield int(url.rsplit(":", 1)[1])


def test_check_reachable_refuses_a_closed_port(closed_port: int) -> None:
    address = f"127.0.0.1:{closed_port}"
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        check_reachable(address, "RAY_ADDRESS", timeout_s=5.0)
    assert time.monotonic() - t0 < 30.0  # refused at once; Ray retried for minutes
    text = str(info.value)
    assert "\n" not in text
    assert address in text and "RAY_ADDRESS" in text


def test_check_reachable_leaves_other_forms_to_ray() -> None:
    # (ray://host:port is checked since session 22: test_s22_ray_client_unreachable)
    for address in ("auto", "local", "ray://no-port-here", "http://127.0.0.1:1", "no-port-here"):
        check_reachable(address, "RAY_ADDRESS", timeout_s=0.1)  # no socket, no error


def test_check_reachable_accepts_a_listening_port() -> None:
    # (since stop 46 the port must answer as a gRPC server: test_s46_ray_not_grpc)
    with service(grpc_like) as port:
        check_reachable(f"127.0.0.1:{port}", "RAY_ADDRESS")


def test_start_with_an_unreachable_ray_address_fails_fast(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    if ray.is_initialized():  # a runtime from another test: the address would not be used
        pytest.skip("a Ray runtime is already running in this process")
    started: list[object] = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append((a, k)))
    address = f"127.0.0.1:{closed_port}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    ctx = tiny_context()
    backend = RayBackend(workers=1)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="RAY_ADDRESS") as info:
        backend.start(ctx)
    assert time.monotonic() - t0 < 30.0
    assert address in str(info.value)
    assert started == []  # refused before ray.init
    assert not ray.is_initialized()
    backend.close()
