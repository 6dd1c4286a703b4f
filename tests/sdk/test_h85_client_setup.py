"""What an app developer sees when the coordinator address is wrong or unreachable.

Before: a `base_url` without a scheme (`Client("127.0.0.1:8080", ...)`) failed at the first
request with `protocol.auth.AuthError: request target must be printable ASCII starting with
'/'`, and an unsupported scheme was retried as a transient failure; a coordinator that is down
raised `httpx.ConnectError: [Errno 111] Connection refused`, which names neither the address
nor how many attempts were made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdk import AsyncClient, Client
from tests.coordinator.test_service_support import refused_url


@pytest.mark.parametrize(
    "url",
    ["127.0.0.1:8080", "localhost", "ftp://coord", "http://", "", "//coord:8080"],
)
@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_a_base_url_that_is_no_http_url_is_refused_when_built(
    tmp_path: Path, cls: Any, url: str
) -> None:
    # Prepare
    app = tmp_path / "app"
    # Execute / Assert: one sentence naming the argument and what it must look like
    with pytest.raises(ValueError, match=r"base_url must be an http:// or https:// URL"):
        cls(url, str(app))
    assert not app.exists()  # refused before the app directory is made


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "https://coord.example/", "HTTP://coord", "http://[::1]:80"]
)
def test_http_and_https_urls_are_accepted(tmp_path: Path, url: str) -> None:
    with Client(url, str(tmp_path / "app")) as client:
        assert client.device_id


@pytest.fixture
def refused() -> Iterator[str]:
    """A loopback URL nothing listens at, its port held (bound, not listening) while the test
    runs so that no other process's server can take it (test_service_support.refused_url)."""
    with refused_url() as url:
        yield url


def test_an_unreachable_coordinator_is_named_with_the_attempts(
    tmp_path: Path, refused: str
) -> None:
    # Prepare: nothing listens on the port
    url = refused
    with Client(url, str(tmp_path / "app"), retries=1, backoff_s=0.0) as client:
        # Execute / Assert: still an httpx.ConnectError (apps catch httpx.TransportError),
        # now naming the coordinator and the attempts made
        with pytest.raises(httpx.ConnectError) as info:
            client.register()
    text = str(info.value)
    assert f"could not reach the coordinator at {url} for POST /v1/devices in" in text
    assert "2 attempts" in text
    assert isinstance(info.value.__cause__, httpx.ConnectError)  # httpx's own error kept


def test_an_unreachable_coordinator_is_named_by_the_async_client(
    tmp_path: Path, refused: str
) -> None:
    url = refused

    async def run() -> None:
        async with AsyncClient(url, str(tmp_path / "app"), retries=0, backoff_s=0.0) as client:
            await client.check_in()

    with pytest.raises(httpx.ConnectError, match=r"at http://127\.0\.0\.1:\d+ .*1 attempt\b"):
        asyncio.run(run())
