"""A connection must send its request head in full within the head timeout (helper-228's F2):
uvicorn's h11 protocol has no timer before a connection's first request, and its keep-alive
timer stops at the first byte after a response, so a client that sent part of a head and
stopped held its connection (and a file descriptor) forever; 140 of them under `ulimit -n 128`
left the coordinator answering no one. A loopback coordinator with a 1 s head timeout and raw
sockets; every bound below is several times the timeout, and keep-alive is unchanged."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.server import HEAD_TIMEOUT_S, CountingH11Protocol, uvicorn_config

from .test_service_support import ADMIN

TIMEOUT = 1.0
# How long a test waits for the server to close a connection: 8x the timeout.
CLOSE_WITHIN = 8 * TIMEOUT

HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"


@pytest.fixture()
def url(tmp_path: Path) -> Iterator[str]:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(cfg, head_timeout_s=TIMEOUT) as u:
        yield u


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=CLOSE_WITHIN)


def _closed_by_server(s: socket.socket, within: float = CLOSE_WITHIN) -> bool:
    """Whether the server closes `s` within `within` seconds (what it sends is skipped)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            if s.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def _answer(s: socket.socket) -> bytes:
    """One small response (read until its body, `{"status":...}`, ends)."""
    got = b""
    while not (b"\r\n\r\n" in got and got.endswith(b"}")):
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {got!r}"
        got += chunk
    return got


def test_a_partial_head_is_closed_and_others_are_served(url: str) -> None:
    # Execute: a head that never ends, then a normal request on another connection
    with _connect(url) as stalled:
        stalled.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        # Assert
        assert _closed_by_server(stalled)
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(url: str) -> None:
    with _connect(url) as silent:
        assert _closed_by_server(silent)


def test_a_trickled_head_is_closed_although_bytes_keep_arriving(url: str) -> None:
    head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 200
    with _connect(url) as slow:
        closed = False
        deadline = time.monotonic() + CLOSE_WITHIN
        for byte in head:  # one byte every TIMEOUT / 5: each arrives well inside the timeout
            if time.monotonic() > deadline:
                break
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(TIMEOUT / 5)
        assert closed or _closed_by_server(slow, within=1.0)


def test_a_partial_head_after_a_response_is_closed(url: str) -> None:
    with _connect(url) as s:
        s.sendall(HEALTHZ)
        assert _answer(s).startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next head, never finished
        assert _closed_by_server(s)


def test_keep_alive_is_unchanged_for_an_idle_client(url: str) -> None:
    # An idle gap longer than the head timeout between two requests: uvicorn's keep-alive
    # timeout (30 s) governs it, as before, so the connection is still there
    with _connect(url) as s:
        s.sendall(HEALTHZ)
        assert _answer(s).startswith(b"HTTP/1.1 200 ")
        assert not _closed_by_server(s, within=3 * TIMEOUT)
        s.sendall(HEALTHZ)
        assert _answer(s).startswith(b"HTTP/1.1 200 ")


def test_a_pipelined_pair_and_a_slow_but_timely_head_are_served(url: str) -> None:
    with _connect(url) as s:
        s.sendall(HEALTHZ + HEALTHZ)
        got = b""
        while got.count(b"HTTP/1.1 200 ") < 2 or not got.endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk
            got += chunk
        # A head sent in two parts, the second well inside the timeout
        s.sendall(HEALTHZ[:10])
        time.sleep(TIMEOUT / 10)
        s.sendall(HEALTHZ[10:])
        assert _answer(s).startswith(b"HTTP/1.1 200 ")


def test_a_request_whose_body_is_drained_after_the_answer_is_closed(url: str) -> None:
    # POST /healthz is answered 405 without the app reading the body; uvicorn then reads the
    # body to its end before the next request, and a sender that stops half-way held it
    with _connect(url) as s:
        s.sendall(b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            assert chunk
            got += chunk
        assert got.startswith(b"HTTP/1.1 405 ")
        s.sendall(b"x" * 10)  # more of the body, then nothing
        assert _closed_by_server(s)


def test_a_long_request_is_not_cut_by_the_head_timeout(tmp_path: Path) -> None:
    # The timer stops once a head has arrived: a body read slowly by the app is the body
    # timeout's (here 0: none), however long it takes past the head timeout
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, body_timeout_s=0)
    with ServerThread(cfg, head_timeout_s=TIMEOUT) as u, _connect(u) as s:
        body = b'{"platform": "x"}'
        s.sendall(
            # (a route whose header checks pass, so that its body is read: POST /v1/devices
            # answers an unsigned request before its body)
            b"POST /v1/admin/tasks HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + b"authorization: Bearer %s\r\n" % ADMIN.encode()
            + b"content-length: %d\r\n\r\n" % len(body)
        )
        assert not _closed_by_server(s, within=3 * TIMEOUT)
        s.sendall(body)
        assert _answer(s).startswith(b"HTTP/1.1 ")


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_bad_head_timeout_is_refused(tmp_path: Path, bad: float) -> None:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"))
    with pytest.raises(ValueError, match="head_timeout_s"):
        ServerThread(cfg, head_timeout_s=bad)


def test_the_default_head_timeout() -> None:
    assert HEAD_TIMEOUT_S == 30.0
    config = uvicorn_config(object(), "127.0.0.1", 0)
    assert config.http is CountingH11Protocol
    assert CountingH11Protocol.head_timeout_s == HEAD_TIMEOUT_S
    assert config.limit_concurrency is None  # see uvicorn_config: no 503 cap
    off = uvicorn_config(object(), "127.0.0.1", 0, head_timeout_s=0)
    assert isinstance(off.http, type) and issubclass(off.http, CountingH11Protocol)
    assert off.http.head_timeout_s == 0
