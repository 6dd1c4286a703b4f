"""A request answered before its body has arrived closes its connection (s25/http review).

- Finding 1: the upload route's early refusals (415 wrong type, 401 unregistered device, 413
  from a declared `Content-Length`) and the initial model's 413 answered without
  `connection: close`, so uvicorn kept reading the body after the answer: all of a declared
  length, or a chunked body without end, until the 30 s head timer. Now the wire middleware
  adds `connection: close` to any answer that starts while the request's body has not been
  read to its end, and uvicorn closes the connection once the answer is out.
- Finding 5: `PUT /v1/admin/tasks/{id}/model` refused an oversized snapshot only while it
  streamed; a declared `Content-Length` over the cap is now 413 before a byte is read.
- Finding 2: a request with both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1) is
  refused with a 400 naming the reason, and its connection closes (a pipelined request after
  it is not answered).

A real coordinator on loopback (default 30 s head timeout) and raw sockets. "Promptly" is
within 10 s, a third of the 30 s the old code held a connection.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from compression import DecodeLimits
from protocol import auth
from protocol.messages import to_json

from .test_service_hardening import _register, _signed
from .test_service_support import ADMIN, SPEC, create_task, task_config, task_server

CLOSE_WITHIN = 10.0  # the old code closed such a connection after the 30 s head timeout
PIECE = b"1000\r\n" + b"\0" * 0x1000 + b"\r\n"  # one 4 KiB chunk


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("early")) as client:
        yield client


def _address(http: httpx.Client) -> tuple[str, int]:
    return http.base_url.host, int(http.base_url.port or 80)


def _head(method: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: x", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_answer(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body: (status, headers, body)."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        assert chunk, f"closed before an answer, after {got!r}"
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    size = int(headers["content-length"])
    while len(body) < size:
        chunk = s.recv(65536)
        assert chunk, "closed in the middle of the answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body[:size]


def _closed_while_sending(s: socket.socket, piece: bytes, within: float = CLOSE_WITHIN) -> bool:
    """Keep sending `piece` (about 80 KB/s, not a flood) and tell whether the server closes
    the connection within `within` seconds: a send refused, or the end of its stream read."""
    s.setblocking(False)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            try:
                if s.recv(65536) == b"":
                    return True
            except BlockingIOError:
                pass
            try:
                s.send(piece)
            except BlockingIOError:
                pass  # the server is not reading: its buffers are full
            time.sleep(0.05)
    except (BrokenPipeError, ConnectionResetError):
        return True
    return False


def _upload_head(key: bytes, framing: dict[str, str], content_type: str) -> bytes:
    target = "/v1/rounds/1/updates"
    headers = {
        **_signed(key, "POST", target, 1, b""),
        "content-type": content_type,
        "idempotency-key": "k-1",
        **framing,
    }
    return _head("POST", target, headers)


CHUNKED = {"transfer-encoding": "chunked"}


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("415 chunked", 415),
        ("401 unregistered, chunked", 401),
        ("413 declared length", 413),
        ("415 declared length", 415),
    ],
)
def test_an_upload_refused_before_its_body_closes_the_connection(
    http: httpx.Client, case: str, status: int
) -> None:
    # Prepare: a registered device (the 413 needs one) and a stranger's key
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    stranger = auth.generate_private_key()
    octet = "application/octet-stream"
    framing = CHUNKED if "chunked" in case else {"content-length": str(10**9)}
    head = _upload_head(
        stranger if "unregistered" in case else key,
        framing,
        "text/plain" if case.startswith("415") else octet,
    )
    piece = PIECE if "chunked" in case else b"\0" * 0x1000
    with socket.create_connection(_address(http), timeout=CLOSE_WITHIN) as s:
        # Execute: the head and a first piece of a body that does not end
        s.sendall(head + piece)
        got, headers, body = _read_answer(s)
        # Assert: the refusal says it closes, and the connection does close, promptly
        assert got == status, (got, body)
        assert json.loads(body)["reason"], body
        assert _closed_while_sending(s, piece), f"{case}: still reading the body after its answer"
        assert headers.get("connection") == "close", headers
    assert http.get("/healthz").status_code == 200


def _awaiting_model_task(http: httpx.Client) -> int:
    r = http.post(
        "/v1/admin/tasks",
        json=to_json(task_config()),
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert r.status_code == 201, r.text
    return int(r.json()["task_id"])


def test_an_initial_model_over_the_cap_is_413_from_its_declared_length(
    http: httpx.Client,
) -> None:
    # Prepare: a task awaiting its model; a declared length one byte over its snapshot cap
    task_id = _awaiting_model_task(http)
    cap = DecodeLimits().frame_cap(SPEC)
    head = _head(
        "PUT",
        f"/v1/admin/tasks/{task_id}/model",
        {
            "authorization": f"Bearer {ADMIN}",
            "content-type": "application/octet-stream",
            "content-length": str(cap + 1),
        },
    )
    with socket.create_connection(_address(http), timeout=CLOSE_WITHIN) as s:
        # Execute: the head alone (the old code waited for 64 KiB of body before answering)
        s.sendall(head)
        got, headers, body = _read_answer(s)
        # Assert: 413 before any body, and the connection closes though the body keeps coming
        assert got == 413, body
        assert json.loads(body)["reason"] == "too_large", body
        assert str(cap) in json.loads(body)["detail"], body
        assert headers.get("connection") == "close", headers
        assert _closed_while_sending(s, b"\0" * 0x1000)
    # ... and the task still awaits its model, which a right-sized PUT then sets
    status = http.get(
        f"/v1/admin/tasks/{task_id}", headers={"authorization": f"Bearer {ADMIN}"}
    ).json()
    assert status["state"] == "awaiting_model", status


def test_an_initial_model_refused_while_streaming_closes_the_connection(
    http: httpx.Client,
) -> None:
    # Prepare: a chunked snapshot that never ends, to a task awaiting its model
    task_id = _awaiting_model_task(http)
    head = _head(
        "PUT",
        f"/v1/admin/tasks/{task_id}/model",
        {
            "authorization": f"Bearer {ADMIN}",
            "content-type": "application/octet-stream",
            **CHUNKED,
        },
    )
    cap = DecodeLimits().frame_cap(SPEC)
    with socket.create_connection(_address(http), timeout=CLOSE_WITHIN) as s:
        # Execute: past the cap, then on
        s.sendall(head + PIECE * (cap // 0x1000 + 2))
        got, headers, body = _read_answer(s)
        # Assert
        assert got == 413, body
        assert headers.get("connection") == "close", headers
        assert _closed_while_sending(s, PIECE)


def test_a_refusal_after_the_whole_body_arrived_keeps_the_connection(
    http: httpx.Client,
) -> None:
    # A 415 whose small body came with its head: nothing is left to read, so keep-alive holds
    body = b'{"platform": "x"}'
    first = _head(
        "POST",
        "/v1/checkin",
        {"content-type": "text/plain", "content-length": str(len(body))},
    )
    second = _head("GET", "/healthz", {})
    with socket.create_connection(_address(http), timeout=CLOSE_WITHIN) as s:
        s.sendall(first + body)
        got, headers, _ = _read_answer(s)
        assert got == 415
        assert "connection" not in headers, headers
        s.sendall(second)
        got, _, answer = _read_answer(s)
        assert got == 200, answer


def _raw_exchange(http: httpx.Client, data: bytes) -> tuple[bytes, bool]:
    """Send `data`; (what came back, whether the server closed the connection within 10 s)."""
    got = b""
    with socket.create_connection(_address(http), timeout=CLOSE_WITHIN) as s:
        s.sendall(data)
        deadline = time.monotonic() + CLOSE_WITHIN
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return got, False
            except ConnectionResetError:
                return got, True
            if not chunk:
                return got, True
            got += chunk
    return got, False


@pytest.mark.parametrize("order", ["cl-first", "te-first"])
def test_content_length_with_transfer_encoding_is_400_and_closes(
    http: httpx.Client, order: str
) -> None:
    # Prepare: a signed check-in framed both ways, and a pipelined request behind it (what a
    # front proxy framing by Content-Length would read as part of the body, or not)
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    body = b'{"platform": "x"}'
    framing: list[tuple[str, str]] = [
        ("content-length", str(len(body))),
        ("transfer-encoding", "chunked"),
    ]
    if order == "te-first":
        framing.reverse()
    headers: dict[str, Any] = {
        **_signed(key, "POST", "/v1/checkin", 0, body),
        "content-type": "application/json",
        **dict(framing),
    }
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    pipelined = _head("GET", "/healthz", {})
    # Execute
    got, closed = _raw_exchange(http, _head("POST", "/v1/checkin", headers) + chunked + pipelined)
    # Assert: one answer, a 400 with a reason, then the connection closed
    assert got.startswith(b"HTTP/1.1 400 "), got[:200]
    assert got.count(b"HTTP/1.1 ") == 1, got
    head, _, answer = got.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    refusal = json.loads(answer)
    assert refusal["reason"] == "malformed", refusal
    assert "Transfer-Encoding" in refusal["detail"] and "Content-Length" in refusal["detail"]
    assert closed


def test_a_chunked_request_alone_is_still_served(http: httpx.Client) -> None:
    # The guard: chunked without Content-Length is fine (the SDK sends Content-Length)
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    task_id = create_task(http)
    body = json.dumps({"task_id": task_id}).encode()
    headers = {
        **_signed(key, "POST", "/v1/checkin", 0, body),
        "content-type": "application/json",
        **CHUNKED,
    }
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    with socket.create_connection(_address(http), timeout=CLOSE_WITHIN) as s:
        s.sendall(_head("POST", "/v1/checkin", headers) + chunked)
        got, answer_headers, answer = _read_answer(s)
        assert got == 200, answer
        assert "connection" not in answer_headers
