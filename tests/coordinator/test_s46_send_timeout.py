"""Stop 46: an answer its client does not read holds about one part of the coordinator's
memory, and the connection is cut after the send timeout; a slow reader that keeps reading is
not (helper-385).

Before, a model download handed its whole body to the transport at once: 300 connections that
asked for a 6 MB snapshot and never read it took a coordinator from 141 MB to 1.4 GB, held for
as long as they stayed open (no timer bounds a client that does not read). Now the wire
middleware sends large bodies in parts of `SEND_PART`, each once the transport has drained
(uvicorn waits while it is paused), and `CountingH11Protocol` aborts a connection whose write
buffer stays above its high-water mark for `send_timeout_s`.

A loopback coordinator with a 1 s send timeout and a 16 MB model, larger than what the kernel
buffers on loopback (tcp_wmem's 4 MB at most, and a 4 KiB receive buffer at the client)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from compression import ModelSpec, encode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.wire import SEND_PART
from protocol.messages import TensorShape, to_json

from .test_service_support import ADMIN, device_client, signed_headers, task_config

SEND_TIMEOUT = 1.0
D = 4_000_000  # a 16 MB fp32 snapshot
AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, int, Any]]:
    """(the server, a task with a D-float model, a registered device's client)."""
    root = tmp_path_factory.mktemp("s46send")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN)
    srv = ServerThread(cfg, send_timeout_s=SEND_TIMEOUT)
    url = srv.start()
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            task = task_config(spec=[TensorShape("w", [D])])
            r = http.post("/v1/admin/tasks", json=to_json(task), headers=AUTH)
            assert r.status_code == 201, r.text
            task_id = int(r.json()["task_id"])
            params = np.random.default_rng(0).normal(0, 0.1, D).astype(np.float32)
            snap = encode_snapshot(params, ModelSpec.from_shapes([("w", (D,))]), "fp32")
            r = http.put(
                f"/v1/admin/tasks/{task_id}/model",
                content=snap,
                headers={**AUTH, "content-type": "application/octet-stream"},
            )
            assert r.status_code == 200, r.text
        device = device_client(url, str(root / "dev"))
        device.register()
        yield srv, task_id, device
        device.close()
    finally:
        srv.stop()


def _ask_snapshot(srv: ServerThread, task_id: int, device: Any) -> socket.socket:
    """A raw connection that asks for the task's whole snapshot, reading nothing yet."""
    host, port = srv.url.removeprefix("http://").split(":")
    target = f"/v1/tasks/{task_id}/model?format=snapshot&dtype=fp32"
    head = {"host": "x", **signed_headers(device._core.key, "GET", target, 0)}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    sock.sendall(f"GET {target} HTTP/1.1\r\n{lines}\r\n".encode())
    return sock


def _paused(srv: ServerThread) -> list[Any]:
    """The server's connections whose client is not keeping up (writing paused)."""
    return [c for c in list(srv.server.server_state.connections) if c.flow.write_paused]


def _wait(cond: Any, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def test_an_unread_download_holds_one_part_and_is_cut_after_the_send_timeout(
    served: tuple[ServerThread, int, Any],
) -> None:
    # Prepare
    srv, task_id, device = served

    # Execute: ask, read nothing
    sock = _ask_snapshot(srv, task_id, device)
    try:
        assert _wait(lambda: _paused(srv), 5.0)
        (conn,) = _paused(srv)
        time.sleep(SEND_TIMEOUT / 2)
        buffered = conn.transport.get_write_buffer_size()
        cut = _wait(lambda: conn not in srv.server.server_state.connections, 8 * SEND_TIMEOUT)

        # Assert: about one part in this process (16 MB before), then the connection is cut
        assert buffered <= 2 * SEND_PART, buffered
        assert cut
        got = b""
        with pytest.raises(OSError):  # the abort's reset, or the end of a short answer
            while chunk := sock.recv(1 << 20):
                got += chunk
            raise ConnectionResetError("closed before the whole answer")
        assert len(got) < 3 * D
    finally:
        sock.close()
    # the server goes on serving
    with httpx.Client(base_url=srv.url) as http:
        assert http.get("/healthz").status_code == 200


def test_a_slow_reader_that_keeps_reading_gets_the_whole_model(
    served: tuple[ServerThread, int, Any],
) -> None:
    # Prepare
    srv, task_id, device = served
    sock = _ask_snapshot(srv, task_id, device)
    try:
        # Execute: 3 send timeouts of reading 64 KiB every 0.25 s, then the rest at once
        got = bytearray()
        end = time.monotonic() + 3 * SEND_TIMEOUT
        while time.monotonic() < end:
            got += sock.recv(65536)
            time.sleep(0.25)
        while chunk := sock.recv(1 << 20):
            got += chunk
            head, sep, body = bytes(got).partition(b"\r\n\r\n")
            if sep:
                length = int(
                    next(
                        line.split(b":", 1)[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                if len(body) >= length:
                    break
    finally:
        sock.close()

    # Assert: the whole answer, 200
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == length and length > 3 * D  # zstd of random floats: ~0.93x
