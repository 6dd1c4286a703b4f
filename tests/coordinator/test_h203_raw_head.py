"""A request head is counted as it arrived, padding included (helper-202's F5): h11 hands the
app header values without the optional whitespace around them, and the head rebuilt from them
left tens of KB per request uncounted. A loopback coordinator and raw sockets."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig

from .test_service_support import ADMIN


@pytest.fixture()
def url(tmp_path: Path) -> Iterator[str]:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(cfg) as u:
        yield u


def _control_up(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(r'^plume_control_wire_bytes_total\{direction="up"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _send(url: str, raw: bytes, answers: int = 1) -> list[bytes]:
    host, port = url.removeprefix("http://").split(":")
    got = b""
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(raw)
        while got.count(b"HTTP/1.1 ") < answers or not got.endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]*", got)


def _padded(pad: int, close: bool = True) -> bytes:
    tail = b"connection: close\r\n" if close else b""
    return (
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad:"
        + b" " * pad
        + b"a"
        + b" " * pad
        + (b"\r\n" + tail + b"\r\n")
    )


@pytest.mark.parametrize("pad", [3, 7_000, 30_000])
def test_padding_around_a_header_value_is_counted(url: str, pad: int) -> None:
    # Each measurement also counts one /metrics request of the same size: the difference
    # between a padded request and an unpadded one is the padding alone
    before = _control_up(url)
    assert _send(url, _padded(0)) == [b"HTTP/1.1 200 OK"]
    plain = _control_up(url) - before
    before = _control_up(url)
    assert _send(url, _padded(pad)) == [b"HTTP/1.1 200 OK"]
    padded = _control_up(url) - before
    assert padded - plain == 2 * pad


def test_pipelined_heads_are_each_counted_as_sent(url: str) -> None:
    before = _control_up(url)
    assert _send(url, _padded(0)) == [b"HTTP/1.1 200 OK"]
    plain = _control_up(url) - before
    before = _control_up(url)
    two = _padded(500, close=False) + _padded(9_000)
    assert _send(url, two, answers=2) == [b"HTTP/1.1 200 OK"] * 2
    counted = _control_up(url) - before
    # plain = one /metrics request + one unpadded head with `connection: close`
    keep_alive_head = len(_padded(500, close=False))
    assert counted == plain + 2 * 9_000 + keep_alive_head
