"""`PUT /v1/admin/tasks/{id}/model` on a task that already has a model is refused (409
`invalid_state`) before its body is read. Before, the route read the whole body (up to the
snapshot cap) and only then refused: the refusal waited for a body it would never use, and a
client that sent the headers alone was kept until the body timeout (408)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from compression import DecodeLimits
from coordinator.service import ServerThread, ServiceConfig

from .test_service_support import ADMIN, SPEC, create_task


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    root = tmp_path_factory.mktemp("putmodel")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http)  # creates the task and uploads its model
        yield url, task_id


def _headers_only(url: str, task_id: int, length: int) -> bytes:
    """Send a PUT's headers announcing `length` body bytes, none of the body; what comes back
    within 5 s (b"" if nothing)."""
    parts = urlsplit(url)
    head = (
        f"PUT /v1/admin/tasks/{task_id}/model HTTP/1.1\r\nhost: {parts.hostname}\r\n"
        f"authorization: Bearer {ADMIN}\r\ncontent-type: application/octet-stream\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as conn:
        conn.sendall(head)
        data = b""
        try:
            while True:  # the status line and headers, then the body they announce
                chunk = conn.recv(4096)
                data += chunk
                top, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", top, re.IGNORECASE)
                if not chunk or (length and len(body) >= int(length.group(1))):
                    return data
        except TimeoutError:
            return data


def test_a_second_model_is_refused_before_its_body_arrives(served: tuple[str, int]) -> None:
    url, task_id = served
    # Execute: a body of the cap's size announced, never sent
    answer = _headers_only(url, task_id, DecodeLimits().frame_cap(SPEC))
    # Assert: 409 invalid_state at once, not a wait for the body
    assert answer.startswith(b"HTTP/1.1 409"), answer[:200]
    assert b"invalid_state" in answer and b"already has a model" in answer


def test_a_second_model_sent_in_full_is_still_refused(served: tuple[str, int]) -> None:
    url, task_id = served
    with httpx.Client(base_url=url) as http:
        r = http.put(
            f"/v1/admin/tasks/{task_id}/model",
            content=b"\0" * 64,
            headers={
                "authorization": f"Bearer {ADMIN}",
                "content-type": "application/octet-stream",
            },
        )
    assert r.status_code == 409 and r.json()["reason"] == "invalid_state"


def test_an_unknown_task_is_still_404(tmp_path: Path, served: tuple[str, int]) -> None:
    url, _ = served
    answer = _headers_only(url, 999, 10)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
