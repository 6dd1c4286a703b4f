"""Hard time bounds of the device SDK against a slow or stalling coordinator on a loopback
socket: `participate`'s `max_wait_s` bounds a check-in's own retries and its request in flight,
and `max_response_s` bounds a whole response, headers included, for `Client` as for
`AsyncClient`.

Budgets are small (1 s) and the tolerance generous (1.5 s) for a loaded machine; the behaviour
these tests guard against took 8 s or more in each case.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from sdk import AsyncClient, Client
from sdk import client as sdk_client
from sdk.client import ClientError, RoundReport

from .test_client import RECEIPT, SPEC
from .test_client_hostile_server import _train_answer, snapshot_answer
from .test_client_secure import ShiftTrainer

BUDGET_S = 1.0
# How far past the budget a bounded call may end: 4x the budget for a loaded machine (CI's 2 cores
# after thousands of tests), still below each test's unbounded time (8 s and more).
SLACK_S = 3.0
WAIT = b'{"action": "wait", "retry_after_s": 1.0}'


def _data() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    return np.zeros((8, 4), np.float32), np.zeros(8, np.int64)


def _read_request(conn: socket.socket) -> bool:
    """Read one HTTP/1.1 request (headers and Content-Length body); False at end of stream."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def _answer(status: str, body: bytes, *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", *headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Loopback:
    """A coordinator on 127.0.0.1 that answers the n-th request (from 0) as `act(n)` says:
    "503" (Retry-After 0.4 s), "stall" (never answers), "trickle" (one header byte every
    0.2 s, 40 bytes, then closes) or "wait" (a 200 check-in answer)."""

    def __init__(self, act: Callable[[int], str]) -> None:
        self.act = act
        self.requests = 0
        self.cut = threading.Event()  # set when the client closed a trickled connection
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Loopback:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        # shutdown, not just close, wakes a thread blocked in accept() or recv() on Linux
        for sock in (self.sock, *self.conns):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for t in self.threads:
            t.join(timeout=5)

    def _spawn(self, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, daemon=True)
        self.threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self._spawn(lambda conn=conn: self._serve(conn))  # type: ignore[misc]

    def _serve(self, conn: socket.socket) -> None:
        try:
            while _read_request(conn):
                with self._lock:
                    n, self.requests = self.requests, self.requests + 1
                act = self.act(n)
                if act == "503":
                    body = b'{"reason": "store_unavailable", "detail": "busy"}'
                    conn.sendall(_answer("503 Service Unavailable", body, "Retry-After: 0.4"))
                elif act == "wait":
                    conn.sendall(_answer("200 OK", WAIT))
                elif act == "stall":
                    self.stop.wait()
                    return
                else:
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 15:
                        conn.send(bytes([byte]))
                        if self.stop.wait(0.2):
                            return
                    return
        except OSError:  # the client closed the connection
            self.cut.set()


def _participate(kind: str, url: str, root: Path, **client_args: float) -> RoundReport | None:
    x, y = _data()
    if kind == "sync":
        with Client(url, str(root), **client_args) as c:  # type: ignore[arg-type]
            return c.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=BUDGET_S)

    async def run() -> RoundReport | None:
        async with AsyncClient(url, str(root), **client_args) as ac:  # type: ignore[arg-type]
            return await ac.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=BUDGET_S)

    return asyncio.run(run())


# -- max_wait_s bounds the check-in phase, retries included --------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_check_in_retries_stop_when_max_wait_is_spent(tmp_path: Path, kind: str) -> None:
    # Prepare: every answer a 503 with Retry-After 0.4 s; 40 retries would sleep 16 s
    with Loopback(lambda n: "503") as server:
        start = time.monotonic()
        # Execute
        report = _participate(kind, server.url, tmp_path, retries=40)
        elapsed = time.monotonic() - start
    # Assert: it retried while the budget allowed, then gave up as a wait that expires does
    assert report is None
    assert server.requests >= 2
    assert elapsed < BUDGET_S + SLACK_S, f"{elapsed:.2f} s for a {BUDGET_S} s max_wait_s"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_check_in_left_unanswered_ends_with_max_wait(tmp_path: Path, kind: str) -> None:
    # Prepare: a server that reads the check-in and never answers (read timeout 30 s, 4 retries)
    with Loopback(lambda n: "stall") as server:
        start = time.monotonic()
        # Execute
        report = _participate(kind, server.url, tmp_path, timeout=30.0)
        elapsed = time.monotonic() - start
    # Assert: the request in flight was bounded by what was left of the wait
    assert report is None and server.requests == 1
    assert 0.8 * BUDGET_S <= elapsed < BUDGET_S + SLACK_S, f"{elapsed:.2f} s"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_check_in_retries_that_fit_in_max_wait_still_raise(tmp_path: Path, kind: str) -> None:
    # Prepare: two 503s, one retry allowed, well inside the budget
    with Loopback(lambda n: "503") as server:
        # Execute + Assert: the last 503 is the coordinator's refusal, as before
        with pytest.raises(ClientError) as info:
            _participate(kind, server.url, tmp_path, retries=1)
    assert info.value.status == 503 and info.value.reason == "store_unavailable"
    assert server.requests == 2


def test_max_wait_does_not_bound_the_round_after_the_assignment(tmp_path: Path) -> None:
    # Prepare: an immediate assignment; the model then takes 0.3 s, past a 0.1 s wait budget
    params = np.linspace(0, 1, SPEC.size, dtype=np.float32)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/checkin":
            return httpx.Response(200, content=_train_answer())
        if request.method == "GET":
            time.sleep(0.3)
            return snapshot_answer(params, 0)
        return httpx.Response(200, json=RECEIPT)

    x, y = _data()
    # Execute
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        report = c.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=0.1)
    # Assert: the round ran to its receipt
    assert report is not None and report.receipt.accepted and report.round_id == 5


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_nan_max_wait_is_refused_before_any_request(tmp_path: Path, kind: str) -> None:
    x, y = _data()
    transport = httpx.MockTransport(lambda r: pytest.fail(f"no request expected: {r.url}"))
    with pytest.raises(ValueError, match="max_wait_s"):
        if kind == "sync":
            with Client("http://coord", str(tmp_path), transport=transport) as c:
                c.participate(ShiftTrainer(0.01), x, y, max_wait_s=float("nan"))
        else:

            async def run() -> None:
                t = httpx.MockTransport(lambda r: pytest.fail(f"no request expected: {r.url}"))
                async with AsyncClient("http://coord", str(tmp_path), transport=t) as ac:
                    await ac.participate(ShiftTrainer(0.01), x, y, max_wait_s=float("nan"))

            asyncio.run(run())


# -- max_response_s bounds a whole response, headers included -----------------------------------


@pytest.fixture
def trickle_then_wait() -> Iterator[Loopback]:
    """The first request's answer trickles its headers; later ones are prompt check-in waits."""
    with Loopback(lambda n: "trickle" if n == 0 else "wait") as server:
        yield server


def test_sync_headers_trickled_byte_by_byte_are_abandoned_after_max_response_s(
    tmp_path: Path, trickle_then_wait: Loopback
) -> None:
    # Prepare
    server = trickle_then_wait
    with Client(server.url, str(tmp_path), max_response_s=BUDGET_S) as c:
        start = time.monotonic()
        # Execute
        with pytest.raises(ClientError) as info:
            c.check_in(1)
        elapsed = time.monotonic() - start
        # Assert: abandoned after the budget with the async client's reason, not retried,
        # and the client still works
        assert info.value.reason == "too_slow" and f"{BUDGET_S:g} s" in info.value.detail
        assert elapsed < BUDGET_S + SLACK_S, f"{elapsed:.2f} s"
        assert c.check_in(1).action == "wait"
    # Assert: the trickled connection was closed by the client, so the server stopped on it
    assert server.cut.wait(timeout=5.0)
    assert server.requests == 2


def test_async_headers_trickled_byte_by_byte_are_abandoned_after_max_response_s(
    tmp_path: Path, trickle_then_wait: Loopback
) -> None:
    # Prepare
    server = trickle_then_wait

    async def run() -> tuple[ClientError, float, str]:
        async with AsyncClient(server.url, str(tmp_path), max_response_s=BUDGET_S) as ac:
            start = time.monotonic()
            try:
                await ac.check_in(1)
            except ClientError as err:
                elapsed = time.monotonic() - start
                return err, elapsed, (await ac.check_in(1)).action
            raise AssertionError("the trickled answer was accepted")

    # Execute
    err, elapsed, after = asyncio.run(run())
    # Assert
    assert err.reason == "too_slow" and elapsed < BUDGET_S + SLACK_S, f"{elapsed:.2f} s"
    assert after == "wait" and server.cut.wait(timeout=5.0)


def test_the_socket_bound_is_installed_on_this_httpx(tmp_path: Path) -> None:
    # The trickled-header bound rests on httpx's private transport attributes: with the
    # installed httpx every socket backend of a default Client is wrapped.
    with Client("http://127.0.0.1:1", tmp_path / "app") as client:
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        assert isinstance(pool._network_backend, sdk_client._DeadlineBackend)


def test_an_httpx_without_the_private_attributes_warns_and_keeps_working() -> None:
    # Prepare: a stand-in for a future httpx whose client has no `_transport._pool`
    class Future:
        _transport = object()
        _mounts: dict[str, object] = {}

    # Execute / Assert: a warning naming what is lost, no exception
    with pytest.warns(RuntimeWarning, match="bounds response bodies only"):
        bound = sdk_client._bound_sockets(Future(), sdk_client._Deadline())  # type: ignore[arg-type]
    assert bound is False
