"""A request body that trickles in past the deadline gets 408 and the connection closes."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from coordinator.service import ServerThread, ServiceConfig

from .test_service_support import FORM_SIGNED, serve_cli

HEAD = (
    "POST /v1/devices HTTP/1.1\r\nHost: plume\r\ncontent-type: application/json\r\n"
    + FORM_SIGNED.decode()
    + "content-length: 100\r\n\r\n"
)


def _open(url: str) -> socket.socket:
    u = urlparse(url)
    return socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=10)


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_a_stalled_body_gets_408_with_a_reason(tmp_path: Path) -> None:
    # Prepare: a 1 s deadline (ServiceConfig's shortest); the client declares 100 bytes and
    # sends 1.
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), body_timeout_s=1.0)
    with ServerThread(cfg) as url:
        sock = _open(url)
        t0 = time.monotonic()
        sock.sendall(HEAD.encode() + b"{")

        # Execute
        status, headers, body = _answer(sock)
        waited = time.monotonic() - t0
        sock.close()

    # Assert: refused at the deadline (not at the 10 s socket timeout), and the server
    # closes the connection rather than wait for the rest.
    assert status == 408
    assert json.loads(body)["reason"] == "request_timeout"
    assert headers.get("connection") == "close"
    assert 0.9 < waited < 5


def test_a_slow_body_within_the_deadline_is_read(tmp_path: Path) -> None:
    # Prepare: the same request sent in two parts 0.2 s apart, under a 2 s deadline.
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), body_timeout_s=2.0)
    payload = json.dumps({"public_key": "x" * 80}).encode().ljust(100)
    with ServerThread(cfg) as url:
        sock = _open(url)
        sock.sendall(HEAD.encode() + payload[:10])
        time.sleep(0.2)
        sock.sendall(payload[10:])

        # Execute
        status, _, body = _answer(sock)
        sock.close()

    # Assert: the body arrived and was judged on its content (not a timeout).
    assert status != 408, body
    assert json.loads(body)["reason"] != "request_timeout"


def test_the_serve_flag_reaches_the_config_and_bad_values_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: `serve` replaced by a recorder
    run, seen = serve_cli(monkeypatch)

    # Execute + Assert
    assert run("--body-timeout", "30") == 0 and seen[-1].body_timeout_s == 30.0
    assert run() == 0 and seen[-1].body_timeout_s == 120.0
    assert run("--body-timeout", "-1") == 2
    assert "--body-timeout" in capsys.readouterr().err
