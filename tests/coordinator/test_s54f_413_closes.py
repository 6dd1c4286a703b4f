"""Every 413 `too_large` closes the connection (docs/http-api.md: the 413 row, "the connection
closes", and "a refused request whose whole body had already arrived keeps its connection,
except after the 400 for both framings and a 413 from `Content-Length`, which always close
it"). An upload, a secure stage message or an initial model whose declared length is above
its route's cap was refused by the route itself, and when the whole (small) body had already
arrived the connection was kept (helper-54f's audit): a JSON route's 413, decided in the wire
middleware, always closed. Raw sockets: the answer's header, and the server closing.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol import auth

from .test_service_support import signed_headers

ADMIN = "s54f-413"
SPEC = [{"name": "w", "shape": [10, 16]}, {"name": "b", "shape": [10]}]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("close413")
    with ServerThread(ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN)) as url:
        yield url


def _exchange(url: str, head: str, body: bytes) -> tuple[bytes, bytes]:
    """Send one whole request; the answer's head, and what follows its body until the server
    closes (b"" if it closed; a timeout fails the test: the connection was kept)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        answer_head, _, rest = data.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in answer_head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        while len(rest) < length:
            rest += s.recv(65536)
        after = rest[length:]
        try:
            while chunk := s.recv(65536):
                after += chunk
        except TimeoutError:
            pytest.fail(f"the connection was kept after {answer_head!r}")
        return answer_head, after


def test_an_initial_model_over_its_cap_closes(url: str) -> None:
    # Prepare: a task awaiting its model
    task = {"name": "t", "model_name": "m", "spec": SPEC, "rounds": 1, "clients_per_round": 1}
    r = httpx.post(
        url + "/v1/admin/tasks",
        content=json.dumps(task).encode(),
        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    task_id = r.json()["task_id"]
    body = b"\0" * 4096  # above a 170-parameter model's snapshot cap

    # Execute: the whole body sent with its head
    head, after = _exchange(
        url,
        f"PUT /v1/admin/tasks/{task_id}/model HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ADMIN}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n",
        body,
    )

    # Assert: 413, `connection: close`, and the server closed
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"\r\nconnection: close" in head.lower()
    assert after == b""


def test_an_upload_over_its_cap_closes(url: str) -> None:
    # Prepare: a registered device; an upload to a round that does not exist is capped at
    # the JSON cap (64 KiB), refused from its Content-Length by the route
    key = b"\x05" * 32
    public = auth.public_key_bytes(key)
    reg = json.dumps({"public_key": base64.urlsafe_b64encode(public).rstrip(b"=").decode()})
    r = httpx.post(
        url + "/v1/devices",
        content=reg.encode(),
        headers={
            **signed_headers(key, "POST", "/v1/devices", 0, reg.encode()),
            "content-type": "application/json",
        },
    )
    assert r.status_code == 200, r.text
    body = b"\0" * 70_000
    target = "/v1/rounds/999/updates"
    signed = signed_headers(key, "POST", target, 999, body)
    lines = "".join(f"{k}: {v}\r\n" for k, v in signed.items())

    # Execute: the whole body sent with its head
    head, after = _exchange(
        url,
        f"POST {target} HTTP/1.1\r\nHost: x\r\n{lines}Idempotency-Key: k\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n",
        body,
    )

    # Assert
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"\r\nconnection: close" in head.lower()
    assert after == b""


def test_a_json_body_over_the_cap_closes(url: str) -> None:
    # The middleware's own 413 (it always closed): the same answer
    body = b"\0" * 70_000
    head, after = _exchange(
        url,
        "POST /v1/checkin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n",
        body,
    )
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"\r\nconnection: close" in head.lower()
    assert after == b""
