"""The ledger counts only answers handed to an open connection (s24/r1, finding 5).

uvicorn drops, without a word, what the app sends once it has seen the client close the
connection (`RequestResponseCycle.send` returns when `disconnected`). The wire middleware
counted such an exchange all the same: a device that closed its connection before the answer
(a check-in given up on) had it counted in its round, up and down, while its own
`Client.bandwidth` counted nothing (docs/operations.md, "Requests lost with their connection":
counted nowhere). Now the middleware asks the server, as each part of the answer goes out,
whether the client is gone (an `http.disconnect` that `receive` hands over at once): an answer
the server dropped is counted nowhere, and of a streamed answer the parts sent before the
close are counted. Real uvicorn (`ServerThread`, `CountingH11Protocol`) on a real socket; the
app waits until uvicorn has seen the close (its connection gone from the server's state) before
it answers, so the order is the one the finding is about, not a race."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.metrics import Metrics
from coordinator.service.store import Store
from coordinator.service.wire import SEND_PART, STATE_KEY, Attribution, WireMiddleware

ROUND = 7
FIRST = b"a" * 100  # the first part of the streamed answer
REST = b"b" * 50
BIG = 128 * SEND_PART  # a 16 MiB answer in one body message: sent in 128 parts


class _App:
    """An ASGI app that reads the body, attributes the exchange to round 7, then answers when
    `go` is set (a plain answer of 2 bytes, or a stream whose second part waits for `go2`)."""

    def __init__(self) -> None:
        self.read = threading.Event()  # the request's body is read
        self.go = threading.Event()
        self.go2 = threading.Event()
        self.done = threading.Event()
        self.dropped = threading.Event()  # the middleware called the exchange's on_dropped

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        att = Attribution("dev", ROUND, on_dropped=self.dropped.set)
        if scope["path"] == "/big":  # a model of 2 x BIG dense bytes, BIG on the wire
            att.payload_down, att.dense_down = BIG, 2 * BIG
        scope["state"][STATE_KEY] = att
        self.read.set()
        await _until(self.go)
        if scope["path"] == "/stream":
            size = str(len(FIRST) + len(REST)).encode()
            await send(_start([(b"content-length", size)]))
            await send({"type": "http.response.body", "body": FIRST, "more_body": True})
            await _until(self.go2)
            await send({"type": "http.response.body", "body": REST})
        elif scope["path"] == "/big":  # a model download: one body message, sent in parts
            await send(_start([(b"content-length", str(BIG).encode())]))
            await send({"type": "http.response.body", "body": b"m" * BIG})
        else:
            await send(_start([(b"content-length", b"2")]))
            await send({"type": "http.response.body", "body": b"ok"})
        self.done.set()


def _start(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200, "headers": headers}


async def _until(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.005)


@contextmanager
def _served(tmp_path: Path) -> Iterator[tuple[ServerThread, _App, Store, int]]:
    app = _App()
    store = Store(tmp_path / "plume.db")
    wired = WireMiddleware(app, store, Metrics(), json_cap=1 << 20)
    server = ServerThread(ServiceConfig(db_path=str(tmp_path / "plume.db")), app=wired)
    port = int(server.start().rsplit(":", 1)[1])
    try:
        yield server, app, store, port
    finally:
        app.go.set()
        app.go2.set()
        server.stop()
        store.close()


def _request(port: int, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi".encode())
    return s


def _until_closed_seen(server: ServerThread, app: _App) -> None:
    """Until uvicorn has processed the client's close (the connection, whose request the app
    has read, left the server's state)."""
    assert app.read.wait(20)
    deadline = time.monotonic() + 20
    while server.server.server_state.connections:
        assert time.monotonic() < deadline, "uvicorn never saw the close"
        time.sleep(0.01)


def _ledger(store: Store) -> dict[str, tuple[int, int]]:
    """direction -> (wire bytes, requests) of round 7."""
    return {r[2]: (r[4], r[6]) for r in store.ledger_rows(ROUND)}


def _recv_all(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_an_answer_uvicorn_dropped_after_the_client_closed_is_counted_nowhere(
    tmp_path: Path,
) -> None:
    with _served(tmp_path) as (server, app, store, port):
        # Prepare: the device sends its request and closes before any answer
        _request(port, "/x").close()
        _until_closed_seen(server, app)
        # Execute: the app answers now (uvicorn drops it)
        app.go.set()
        assert app.done.wait(20)
        time.sleep(0.2)  # the middleware accounts right after the app returns
        # Assert: nothing in the round (before: 1 request up and down), and what the route
        # counted for the answer is given back (stop 48: a snapshot's per-device count)
        assert _ledger(store) == {}
        assert app.dropped.is_set()


def test_an_answer_the_device_reads_is_counted_as_before(tmp_path: Path) -> None:
    with _served(tmp_path) as (_, app, store, port):
        # Prepare
        s = _request(port, "/x")
        app.go.set()
        # Execute
        data = _recv_all(s, 1)
        while not data.endswith(b"ok"):
            data += _recv_all(s, 1)
        s.close()
        assert app.done.wait(20)
        deadline = time.monotonic() + 20
        while "down" not in _ledger(store) and time.monotonic() < deadline:
            time.sleep(0.01)
        # Assert: the bytes the device read, one request each way
        assert _ledger(store)["down"] == (len(data), 1)
        assert _ledger(store)["up"][1] == 1
        assert not app.dropped.is_set()


def test_a_stream_cut_by_the_client_counts_the_part_sent_before_the_close(
    tmp_path: Path,
) -> None:
    with _served(tmp_path) as (server, app, store, port):
        # Prepare: the head and the first part reach the device, which then closes
        s = _request(port, "/stream")
        app.go.set()
        data = b""
        while not data.endswith(FIRST):
            data += _recv_all(s, 1)
        s.close()
        _until_closed_seen(server, app)
        # Execute: the rest of the stream goes out after the close (uvicorn drops it)
        app.go2.set()
        assert app.done.wait(20)
        deadline = time.monotonic() + 20
        while "down" not in _ledger(store) and time.monotonic() < deadline:
            time.sleep(0.01)
        # Assert: down = the head and the first part, exactly what the device got
        head = data[: data.index(b"\r\n\r\n") + 4]
        assert len(head) + len(FIRST) == len(data)
        assert _ledger(store)["down"] == (len(data), 1)  # before: REST's 50 bytes too
        assert not app.dropped.is_set()  # part of it went out


def test_a_large_answer_the_device_abandons_counts_the_parts_handed_over_before_the_close(
    tmp_path: Path,
) -> None:
    """Stop 47: an answer above `SEND_PART` (a model download, one body message from the app)
    goes out in parts since stop 46, each asked about like a streamed part: one abandoned
    midway counts what was handed to the connection before the close, not the whole body."""
    with _served(tmp_path) as (_, app, store, port):
        # Prepare: the device reads about 256 KiB of the answer, then closes
        s = _request(port, "/big")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        app.go.set()
        data = _recv_all(s, 256 * 1024)
        s.close()
        # Execute: the app's send returns once the parts left are dropped
        assert app.done.wait(30)
        deadline = time.monotonic() + 20
        while "down" not in _ledger(store) and time.monotonic() < deadline:
            time.sleep(0.01)
        # Assert: at least what the device read, and well short of the whole answer (the
        # kernel's buffers on loopback take at most a few MiB of it; before stop 46's parts:
        # all of the 16 MiB)
        down, requests = _ledger(store)["down"]
        assert requests == 1
        assert len(data) <= down < BIG // 2, down
        # ... and its payload is the body that went out, its dense bytes the same share of
        # the dense model (stop 48, helper-408: before, both were counted whole, 16 and 32 MiB)
        ((payload, dense),) = [(r[3], r[5]) for r in store.ledger_rows(ROUND) if r[2] == "down"]
        head = data[: data.index(b"\r\n\r\n") + 4]
        assert payload == down - len(head)
        assert dense == 2 * payload
