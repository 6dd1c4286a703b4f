"""Stop 46: bytes a client sends after a whole request the app has not answered yet (after a
`Connection: close` request, anything is an error to h11) do not get uvicorn's plain 400 ahead
of the app's answer: the app's answer goes out and the connection closes after it. Before, the
400 went out first and the app's answer then failed in h11 with an ERROR traceback of some 50
lines (`LocalProtocolError: can't handle event type Response when role=SERVER and
state=MUST_CLOSE`): anyone could fill the log with one stray byte sent at the right moment
(helper-387, ~5% of tries on /healthz, every try on a slow enough route)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse

from coordinator.service import ServerThread, ServiceConfig, create_app

from .test_service_support import ADMIN


@contextmanager
def serving_with(tmp_path: Path, path: str, endpoint: Callable[..., Any]) -> Iterator[str]:
    """A loopback coordinator (its real app, on `ServerThread`) with one more GET route."""
    app = create_app(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    app.add_api_route(path, endpoint, methods=["GET"])
    server = ServerThread(ServiceConfig(db_path=str(tmp_path / "unused.db")), app=app)
    try:
        yield server.start()
    finally:
        server.stop()
        app.state.coordinator.store.close()


@pytest.fixture()
def url(tmp_path: Path) -> Iterator[str]:

    async def slow(request: Request) -> JSONResponse:
        # Reading the (empty) body lets uvicorn read the connection again, as the wire
        # middleware's check for a closed connection does: the stray byte is parsed while the
        # route still works.
        await request.body()
        await asyncio.sleep(0.3)
        return JSONResponse({"ok": True})

    with serving_with(tmp_path, "/s46-slow", slow) as url:
        yield url


def _read_all(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


@pytest.mark.parametrize("stray", [b"X", b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 100])
def test_a_stray_byte_after_a_closing_request_gets_the_apps_answer_and_no_traceback(
    url: str, caplog: pytest.LogCaptureFixture, stray: bytes, request: pytest.FixtureRequest
) -> None:
    # Prepare
    host, port = url.removeprefix("http://").split(":")
    caplog.set_level(logging.INFO)
    uvicorn_log = logging.getLogger("uvicorn.error")  # "uvicorn" does not propagate to the root
    uvicorn_log.addHandler(caplog.handler)
    request.addfinalizer(lambda: uvicorn_log.removeHandler(caplog.handler))

    # Execute: the request, then a stray byte while the route is still working
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /s46-slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        time.sleep(0.1)  # the route reads its body (immediately) and sleeps 0.3 s
        sock.sendall(stray)
        answer = _read_all(sock)

    # Assert: the route's answer, then the close; at most uvicorn's one WARNING line
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert answer.endswith(b'{"ok":true}')
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert set(warnings) <= {"Invalid HTTP request received."}, warnings
