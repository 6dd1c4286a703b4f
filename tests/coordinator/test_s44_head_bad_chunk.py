"""A HEAD request whose chunked body the HTTP parser refuses gets uvicorn's 400 without a body
and logs no traceback (s44).

uvicorn's `send_400_response` wrote its plain-text body whatever the request's method; h11
refuses a body on the answer to a HEAD ("Too much data for declared Content-Length"), and
asyncio logged "Fatal error: protocol.data_received() call failed" with a traceback of some 50
lines at ERROR for each such request (no authentication needed: `HEAD /healthz`).
`CountingH11Protocol.send_400_response` now sends a HEAD's 400 without the body.

Also what docs/http-api.md says of two `Content-Length` headers: uvicorn's 400 only when their
values differ (h11 merges identical ones).

A real coordinator on loopback and raw sockets.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from coordinator.service import ServiceConfig
from coordinator.service.server import ServerThread

BAD_CHUNK = b"transfer-encoding: chunked\r\n\r\nzz\r\n"  # `zz` is no chunk size


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    db = tmp_path_factory.mktemp("s44-head") / "plume.db"
    server = ServerThread(ServiceConfig(db_path=str(db)))
    server.start()
    try:
        sock = server.server.servers[0].sockets[0].getsockname()
        yield sock[0], sock[1]
    finally:
        server.stop()


def _exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send `data` on a new connection; everything read until the server closes it."""
    got = b""
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return got


def test_a_head_with_a_bad_chunk_gets_a_bodyless_400_and_no_traceback(
    address: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    caplog.set_level(logging.INFO)
    request = b"HEAD /healthz HTTP/1.1\r\nhost: x\r\n" + BAD_CHUNK
    # Execute: five of them
    answers = [_exchange(address, request) for _ in range(5)]
    # Assert: a 400 head with nothing after it; no ERROR, no traceback, and one uvicorn
    # warning a request
    for answer in answers:
        head, sep, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
        assert b"connection: close" in head.lower()
        assert sep and rest == b"", answer
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert not any(r.exc_info for r in caplog.records)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == ["Invalid HTTP request received."] * 5


def test_a_get_with_a_bad_chunk_still_gets_the_400_body(address: tuple[str, int]) -> None:
    # Execute
    answer = _exchange(address, b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + BAD_CHUNK)
    # Assert: uvicorn's answer as before
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert b"Invalid HTTP request received." in answer


def test_a_bad_chunk_after_a_head_request_line_of_a_new_cycle_is_a_plain_400(
    address: tuple[str, int],
) -> None:
    # Prepare: a HEAD answered on a kept connection (200 without a body: test_s54h_head_health;
    # before it was a 405), then a GET
    # with a bad chunk on it: its 400 has its body, whatever the first request's method was
    first = b"HEAD /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    second = b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + BAD_CHUNK
    # Execute
    answer = _exchange(address, first + second)
    # Assert: the HEAD's answer, then the 400 with its body
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert b"HTTP/1.1 400 Bad Request\r\n" in answer
    assert answer.endswith(b"Invalid HTTP request received.\r\n0\r\n\r\n"), answer


@pytest.mark.parametrize(
    ("lengths", "taken"),
    [
        ((b"2", b"2"), True),  # the same value twice: h11 merges them
        ((b"2, 2",), True),  # one header listing it twice: the same
        ((b"2", b"3"), False),  # two different values: uvicorn's 400
    ],
    ids=["same-twice", "listed-twice", "different"],
)
def test_duplicate_content_lengths_are_refused_only_when_they_differ(
    address: tuple[str, int], lengths: tuple[bytes, ...], taken: bool
) -> None:
    # Prepare: a two-byte body under the given Content-Length headers (docs/http-api.md)
    head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
    head += b"".join(b"content-length: " + n + b"\r\n" for n in lengths)
    # Execute
    answer = _exchange(address, head + b"\r\n{}")
    # Assert
    if taken:
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        assert b"content-type: application/json\r\n" in answer, answer
    else:
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
        assert b"\r\n\r\nInvalid HTTP request received." in answer, answer
