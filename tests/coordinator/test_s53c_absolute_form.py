"""An absolute-form request target (`GET http://host/path HTTP/1.1`) routes as its origin form
(helper-53c; RFC 9112 section 3.2.2: a server MUST accept it).

uvicorn hands such a target over whole as the request's path, so every one was a 404
`not_found`. The wire middleware now routes it by its path: raw sockets to a loopback
coordinator send the same requests in both forms (an unsigned read, a device's signed
registration, signed over the origin-form target, and an admin read) and get the same answers,
and the request counts under its route by its bytes as sent. Driven as ASGI (no
`CountingH11Protocol`, so the head is rebuilt), the target's bytes as sent are counted too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.metrics import Metrics
from coordinator.service.store import Store
from coordinator.service.wire import WireMiddleware, _origin_form
from protocol import auth
from protocol.messages import request_wire_bytes

from .test_service_support import ADMIN, signed_headers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    root = tmp_path_factory.mktemp("absolute")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        yield host, int(port)


def _exchange(at: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    """`request` sent on a new connection (it closes after the answer): status, headers, body."""
    with socket.create_connection(at, timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _request(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: 127.0.0.1", "connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"content-length: {len(body)}"] if body else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _route_up(at: tuple[str, int], route: str) -> float:
    _, _, text = _exchange(at, _request("GET", "/metrics", {}))
    prefix = f'plume_control_wire_bytes_by_route_total{{direction="up",route="{route}"}} '
    found = [line for line in text.decode().splitlines() if line.startswith(prefix)]
    return float(found[0].split()[-1]) if found else 0.0


@pytest.mark.parametrize(
    "absolute",
    ["http://{host}:{port}/healthz", "HTTP://elsewhere.example/healthz", "https://x/healthz"],
)
def test_an_absolute_form_read_answers_as_its_origin_form(
    server: tuple[str, int], absolute: str
) -> None:
    # Prepare
    host, port = server
    target = absolute.format(host=host, port=port)
    before = _route_up(server, "/healthz")
    request = _request("GET", target, {})
    # Execute
    status, _, body = _exchange(server, request)
    origin_status, _, origin_body = _exchange(server, _request("GET", "/healthz", {}))
    # Assert: the same answer (not 404), counted under its route by its bytes as sent
    assert status == origin_status == 200, body
    assert json.loads(body).keys() == json.loads(origin_body).keys()
    assert _route_up(server, "/healthz") - before == len(request) + len(
        _request("GET", "/healthz", {})
    )


def test_a_signed_registration_in_absolute_form_is_taken(server: tuple[str, int]) -> None:
    # Prepare: a device's registration, signed over the origin-form target as always
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).private_bytes_raw()
    public = base64.urlsafe_b64encode(auth.public_key_bytes(key)).rstrip(b"=")
    body = b'{"public_key":"' + public + b'"}'
    headers = signed_headers(key, "POST", "/v1/devices", 0, body)
    headers["content-type"] = "application/json"
    target = f"http://{server[0]}:{server[1]}/v1/devices"
    # Execute
    status, _, answer = _exchange(server, _request("POST", target, headers, body))
    # Assert: registered (it was 404 not_found)
    assert status == 200, answer
    registered = json.loads(answer)
    assert len(registered.pop("incarnation")) == 32  # the database's (test_s54a_incarnation)
    assert registered == {
        "device_id": auth.device_id_for(auth.public_key_bytes(key)),
        "created": True,
    }


def test_an_admin_read_in_absolute_form_with_its_query(server: tuple[str, int]) -> None:
    bearer = {"authorization": f"Bearer {ADMIN}"}
    status, _, body = _exchange(server, _request("GET", "http://h/v1/admin/tasks", bearer))
    assert (status, json.loads(body)) == (200, [])
    # With a query: routed by the path, the query read as in origin form (a key the route
    # does not take is named)
    status, _, body = _exchange(
        server, _request("GET", "http://h/v1/rounds/1/bandwidth?x=1", bearer)
    )
    assert (status, json.loads(body)["reason"]) == (422, "validation"), body
    assert "query.x: unknown parameter" in json.loads(body)["detail"]


def test_a_target_that_is_no_absolute_form_is_left_as_it_is(server: tuple[str, int]) -> None:
    for target in ("ftp://h/healthz", "//h/healthz", "http:/healthz"):
        status, _, body = _exchange(server, _request("GET", target, {}))
        assert (status, json.loads(body)["reason"]) == (404, "not_found"), target


@pytest.mark.parametrize(
    ("raw", "origin"),
    [
        (b"http://h/a/b", b"/a/b"),
        (b"HTTPS://h:8443/a", b"/a"),
        (b"http://h", b"/"),
        (b"http://user@h:1/%31", b"/%31"),
        (b"/a/b", None),
        (b"ftp://h/a", None),
        (b"http:/a", None),
    ],
)
def test_origin_form(raw: bytes, origin: bytes | None) -> None:
    assert _origin_form(raw) == origin


def test_under_another_server_the_target_is_counted_as_sent(tmp_path: Path) -> None:
    # Prepare: the middleware without CountingH11Protocol's head size (the head is rebuilt
    # from the scope), an app that answers 204
    seen: list[tuple[str, bytes]] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["path"], scope["raw_path"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    metrics = Metrics()
    middleware = WireMiddleware(app, Store(str(tmp_path / "p.db")), metrics, json_cap=1 << 16)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "http://h/v1/x",
        "raw_path": b"http://h/v1/x",
        "query_string": b"a=1",
        "http_version": "1.1",
        "headers": [(b"host", b"h")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # Execute
    asyncio.run(middleware(scope, receive, send))
    # Assert: the app saw the origin form; the target counts as sent
    assert seen == [("/v1/x", b"/v1/x")]
    assert sent[0]["status"] == 204
    up = metrics.registry.get_sample_value("plume_control_wire_bytes_total", {"direction": "up"})
    assert up == request_wire_bytes("GET", "http://h/v1/x?a=1", [(b"host", b"h")], 0)
