"""The wire middleware's own refusals (the 413 and the 400 decided from the head, the 408 of a
body past its deadline, the 500 of an unhandled error) are compact JSON, as every other answer
is (Starlette's JSONResponse writes no space after ':' or ','). They had `{"reason":
"too_large", "detail": ...}` with spaces, so one port saw two spellings of the same body.
Raw sockets for the two decided from the head; `_reject`, which writes all four, directly.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.wire import _reject
from protocol.names import Reason


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("compact")
    with ServerThread(ServiceConfig(db_path=str(root / "plume.db"), admin_token="t")) as url:
        yield url


def _body(url: str, head: str) -> bytes:
    """The body of the answer to `head` (a request whose body is not sent)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):  # the server closes after these refusals
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


def _compact(body: bytes) -> bytes:
    return json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":")).encode()


def test_413_from_content_length_is_compact(url: str) -> None:
    # Execute
    body = _body(
        url,
        "POST /v1/check-in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 999999999\r\n\r\n",
    )

    # Assert
    assert json.loads(body)["reason"] == "too_large"
    assert body == _compact(body), body


def test_400_for_both_framings_is_compact(url: str) -> None:
    # Execute
    body = _body(
        url,
        "POST /v1/check-in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    )

    # Assert
    assert json.loads(body)["reason"] == "malformed"
    assert body == _compact(body), body


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (408, Reason.REQUEST_TIMEOUT),
        (413, Reason.TOO_LARGE),
        (400, Reason.MALFORMED),
        (500, Reason.INTERNAL_ERROR),
    ],
)
def test_reject_writes_compact_json(status: int, reason: Reason) -> None:
    # Prepare
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    # Execute
    start, size = asyncio.run(_reject(send, status, reason, "a detail, with: punctuation"))

    # Assert
    body = sent[1]["body"]
    assert (
        body == b'{"reason":"' + str(reason).encode() + b'","detail":"a detail, with: punctuation"}'
    )
    assert size == len(body)
    assert dict(start["headers"])[b"content-length"] == str(len(body)).encode()
