"""A ``ray://host:port`` address nothing answers at fails at once in one line.

Before, `check_reachable` left every ``ray://`` address to Ray: ray.init waited about 30 s for
the Ray client's connection and `plume sim --backend ray --ray-address ray://...` ended in a
traceback (helper-211's report). Now the client port gets the same TCP check as a plain
``host:port`` address, and a user:password@ before the host stays out of the message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mobile_sim.backends.ray_backend import check_reachable
from tests.coordinator.test_service_support import refused_url
from tests.mobile_sim.test_s46_ray_not_grpc import grpc_like, service


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on, held (bound, not listening) while the test runs so
    that no other process's server can take it (test_service_support.refused_url)."""
    with refused_url() as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("suffix", ["", "/", "/namespace"])
def test_a_ray_client_address_nothing_answers_at_is_refused_at_once(
    suffix: str, closed_port: int
) -> None:
    # Arrange
    address = f"ray://127.0.0.1:{closed_port}{suffix}"
    t0 = time.monotonic()
    # Execute
    with pytest.raises(ConnectionError) as info:
        check_reachable(address, "--ray-address", timeout_s=5.0)
    # Assert: one line, naming the address and where it came from, well before Ray's 30 s
    assert time.monotonic() - t0 < 20.0
    text = str(info.value)
    assert "\n" not in text
    assert address in text and "--ray-address" in text


def test_credentials_before_a_ray_client_host_stay_out_of_the_message(closed_port: int) -> None:
    # Arrange
    port = closed_port
    # Execute
    with pytest.raises(ConnectionError) as info:
        check_reachable(f"ray://alice:t0ken@127.0.0.1:{port}", "RAY_ADDRESS", timeout_s=5.0)
    # Assert
    text = str(info.value)
    assert "t0ken" not in text and "alice" not in text
    assert f"ray://127.0.0.1:{port}" in text


def test_a_listening_ray_client_port_passes() -> None:
    # (since stop 46 the port must answer as a gRPC server: test_s46_ray_not_grpc)
    with service(grpc_like) as port:
        check_reachable(f"ray://127.0.0.1:{port}", "--ray-address")
