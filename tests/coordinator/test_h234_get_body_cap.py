"""A GET that shares its path with a streamed upload is held to the JSON body cap (helper-228's
F1): `GET /v1/secure/rounds/{id}/stages/{stage}` was exempt from the 64 KiB cap like the POST
upload of the same path, and the signed-request check read its whole body into memory before it
looked at a single signature header (an unsigned GET declaring 200 MiB was read in full, then
401). docs/http-api.md: 413 `too_large` for a body above the cap, nothing read before
authentication.

Through a real server on loopback: the answer comes while most of the declared body is still
unsent, so the server cannot have waited for it. And the signed-request check itself, with the
wire middleware taken out of the app, stops reading at the cap.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.app import create_app
from coordinator.service.wire import WireMiddleware
from protocol.names import Reason

from .test_service_support import ADMIN, task_server

CAP = 64 * 1024  # ServiceConfig.json_body_cap's default
STAGE = "/v1/secure/rounds/1/stages/advertise-keys"
# Seconds to wait for an answer the server gives at once (in milliseconds): the wrong
# behaviour is to wait for the rest of the body, which never comes (until --body-timeout, 120 s).
PROMPT_S = 15.0


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("getcap")) as client:
        yield client


def _answer(http: httpx.Client, head: bytes, body_parts: list[bytes]) -> tuple[int, dict[str, str]]:
    """Send `head` then `body_parts` on a new connection, never completing the body; the status
    and JSON body of the answer read within PROMPT_S (a socket timeout fails the test)."""
    u = urlparse(str(http.base_url))
    got = b""
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=5) as s:
        s.sendall(head)
        for part in body_parts:
            try:
                s.sendall(part)
            except OSError:  # the server answered and closed: what it sent is read below
                break
        s.settimeout(PROMPT_S)
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < _length(got):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                pytest.fail(f"no complete answer within {PROMPT_S} s; got {got[:200]!r}")
            if not chunk:
                break
            got += chunk
    head_text, _, body = got.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1])
    return status, json.loads(body)


def _length(got: bytes) -> int:
    for line in got.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62  # until the server closes


def test_unsigned_get_of_a_stage_declaring_200_mib_is_413_before_its_body(
    http: httpx.Client,
) -> None:
    # Prepare: a head declaring 200 MiB, and 4 KiB of it
    head = f"GET {STAGE} HTTP/1.1\r\nHost: x\r\nContent-Length: {200 << 20}\r\n\r\n".encode()
    # Execute
    status, body = _answer(http, head, [b"\0" * 4096])
    # Assert: refused from the header, not after reading 200 MiB (nor waiting for it)
    assert status == 413, body
    assert body["reason"] == Reason.TOO_LARGE
    assert f"{CAP}-byte cap" in body["detail"]


def test_unsigned_chunked_get_of_a_stage_is_413_at_the_cap(http: httpx.Client) -> None:
    # Prepare: a chunked body without its last chunk: 80 KiB in 8 KiB chunks, past the cap
    head = f"GET {STAGE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    chunk = b"2000\r\n" + b"\0" * 0x2000 + b"\r\n"
    # Execute
    status, body = _answer(http, head, [chunk] * 10)
    # Assert: refused once the bytes read pass the cap, with the body still open
    assert status == 413, body
    assert body["reason"] == Reason.TOO_LARGE


def test_a_get_with_a_body_under_the_cap_still_reaches_the_signature_check(
    http: httpx.Client,
) -> None:
    r = http.request("GET", STAGE, content=b"\0" * 4096)
    assert r.status_code == 401, r.text
    assert r.json()["reason"] == Reason.UNSIGNED


def test_the_put_of_an_initial_model_is_still_exempt_from_the_json_cap(
    tmp_path: Path,
) -> None:
    # The streamed uploads keep their own caps: a PUT of a snapshot above 64 KiB is taken as
    # far as its size (its own cap is the model's frame cap, here refused as no task 999).
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as client:
        r = client.put(
            "/v1/admin/tasks/999/model",
            content=b"\0" * (CAP + 1),
            headers={
                "authorization": f"Bearer {ADMIN}",
                "content-type": "application/octet-stream",
            },
        )
    assert r.status_code == 404, r.text
    assert r.json()["reason"] == Reason.UNKNOWN_TASK


def test_the_signed_request_check_itself_reads_no_more_than_the_cap(tmp_path: Path) -> None:
    """Defence in depth: with the wire middleware (and its cap) out of the app, an unsigned
    chunked GET of a stage is still refused 413 at the cap, not read whole and then 401."""
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)
    app = create_app(cfg)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not WireMiddleware]
    pulled = 0
    total = 1 << 20

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        while pulled < total:
            pulled += 8192
            yield b"\0" * 8192

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://plume") as client:
            return await client.request("GET", STAGE, content=body())

    r = asyncio.run(run())
    assert r.status_code == 413, r.text
    assert r.json()["reason"] == Reason.TOO_LARGE
    assert r.headers["connection"] == "close"
    assert pulled <= CAP + 8192, pulled

    # And a declared length above the cap is refused from the header alone.
    async def declared() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://plume") as client:
            req = client.build_request("GET", STAGE, content=b"\0" * 16)
            req.headers["content-length"] = str(200 << 20)
            return await client.send(req)

    r = asyncio.run(declared())
    assert r.status_code == 413, r.text
    assert r.json()["reason"] == Reason.TOO_LARGE
