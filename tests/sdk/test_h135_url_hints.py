"""`CoordinatorUnreachable` names what to check in `base_url` when the cause shows a mistake in
it rather than an outage: an https:// URL answered in plain HTTP ("[SSL:
WRONG_VERSION_NUMBER] wrong version number") and a host name that does not resolve ("[Errno
-2] Name or service not known"). Before, both read as an outage, whose advice is "call again
later". The retries are unchanged. The resolver is replaced for names under `.invalid` (which
never resolve), so no test depends on the network or on a slow DNS."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdk import AsyncClient, Client, CoordinatorUnreachable

from .test_h124_unreachable import _dead

_REAL_GETADDRINFO = socket.getaddrinfo
TLS_HINT = "; the server does not speak TLS: is base_url http://?"
DNS_HINT = (
    "; could not resolve the host 'coordinator.invalid': check base_url (or whether the device "
    "is online)"
)
MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


def _check_in_error(base: str, root: Path, asynchronous: bool) -> CoordinatorUnreachable:
    """The error of one check-in against `base`, after its two attempts."""
    kw: dict[str, Any] = {"retries": 1, "backoff_s": 0.0, "timeout": 5.0}
    if not asynchronous:
        with Client(base, str(root), **kw) as client, pytest.raises(Exception) as info:
            client.check_in(1)
    else:

        async def run() -> None:
            async with AsyncClient(base, str(root), **kw) as client:
                await client.check_in(1)

        with pytest.raises(Exception) as info:
            asyncio.run(run())
    assert isinstance(info.value, CoordinatorUnreachable), repr(info.value)
    return info.value


@pytest.fixture
def plain_http() -> Iterator[int]:
    """A plain-HTTP server on loopback (it answers a TLS hello with a 400 in plain text)."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _resolver(errno: int) -> Any:
    """`socket.getaddrinfo` failing with `errno` for names under `.invalid` (anyio passes
    bytes), the real one for any other."""

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.endswith(".invalid"):
            raise socket.gaierror(errno, "Name or service not known")
        return _REAL_GETADDRINFO(host, port, *args, **kwargs)

    return getaddrinfo


@pytest.mark.timeout(20)
@MODES
def test_https_to_a_plain_http_server_says_so(
    tmp_path: Path, plain_http: int, asynchronous: bool
) -> None:
    # Execute: https:// to a server that speaks plain HTTP
    exc = _check_in_error(f"https://127.0.0.1:{plain_http}", tmp_path / "app", asynchronous)

    # Assert: httpx's text kept, then the hint; the retries as before
    text = str(exc)
    assert "WRONG_VERSION_NUMBER" in text and text.endswith(TLS_HINT), text
    assert " in 2 attempts: " in text
    assert isinstance(exc, httpx.ConnectError)


@pytest.mark.timeout(20)
@MODES
def test_a_name_that_does_not_resolve_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    # Setup: `.invalid` never resolves; the resolver says so at once
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(socket.EAI_NONAME))

    # Execute
    exc = _check_in_error("http://coordinator.invalid:8080", tmp_path / "app", asynchronous)

    # Assert
    text = str(exc)
    assert "Name or service not known" in text and text.endswith(DNS_HINT), text
    assert " in 2 attempts: " in text


@pytest.mark.timeout(20)
@MODES
def test_no_hint_for_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    # A resolver that does not answer (EAI_AGAIN: a device offline) and a refused port are
    # outages: "call again later" is the right advice, no hint about base_url
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(socket.EAI_AGAIN))
    offline = _check_in_error("http://coordinator.invalid:8080", tmp_path / "a", asynchronous)
    with _dead("refused") as port:
        refused = _check_in_error(f"http://127.0.0.1:{port}", tmp_path / "b", asynchronous)
    for exc in (offline, refused):
        assert "base_url" not in str(exc), str(exc)
