"""The client's deadline covers the host-name lookup: `socket.getaddrinfo` (inside httpcore's
connect) is replaced by a resolver that stalls for one name, so no real DNS is used.

Budgets are small (1 s) and the tolerance generous (1.5 s) for a loaded machine; the stalled
lookup takes 6 s, which is what an unbounded one took.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx
import pytest

from sdk import AsyncClient, Client
from sdk.client import ClientError

from .test_client_deadlines import WAIT, _answer, _read_request

NAME = "coordinator.test"
BUDGET_S = 1.0
# How far past the budget a bounded call may end: 4x the budget for a loaded machine, below
# STALL_S, the time an unbounded lookup takes (the fixture releases a lookup left stalled).
SLACK_S = 3.0
STALL_S = 10.0
_REAL_GETADDRINFO = socket.getaddrinfo


class Resolver:
    """`socket.getaddrinfo` with `NAME` resolving to `addresses` after `stall_s` (cut short by
    `release`), or failing with `gaierror` when `fail`; any other host as the real one."""

    def __init__(self, addresses: tuple[str, ...] = ("127.0.0.1",), stall_s: float = 0.0) -> None:
        self.addresses = addresses
        self.stall_s = stall_s
        self.fail = False
        self.release = threading.Event()
        self.asked: list[str] = []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if (host.decode() if isinstance(host, bytes) else host) != NAME:  # anyio passes bytes
            return _REAL_GETADDRINFO(host, port, *args, **kwargs)
        self.asked.append(NAME)
        if self.stall_s:
            self.release.wait(self.stall_s)
        if self.fail:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, int(port)))
            for a in self.addresses
        ]


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Resolver]:
    r = Resolver()
    monkeypatch.setattr(socket, "getaddrinfo", r)
    yield r
    r.release.set()  # a lookup left stalled in a worker thread ends now


class Server:
    """A coordinator on 127.0.0.1 answering every request with a check-in wait, keeping each
    request's head."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []

    def __enter__(self) -> Server:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        for s in (self.sock, *self.conns):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self.threads:
            t.join(timeout=5)

    def _spawn(self, fn: Any) -> None:
        t = threading.Thread(target=fn, daemon=True)
        self.threads.append(t)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self._spawn(lambda conn=conn: self._serve(conn))

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                peeked = conn.recv(65536, socket.MSG_PEEK)
                if not peeked or not _read_request(conn):
                    return
                self.heads.append(peeked.partition(b"\r\n\r\n")[0])
                conn.sendall(_answer("200 OK", WAIT))
        except OSError:
            return


def test_a_stalled_lookup_ends_with_max_response_s(tmp_path: Any, resolver: Resolver) -> None:
    # Prepare: the lookup of the coordinator's name stalls for STALL_S (10 s)
    resolver.stall_s = STALL_S
    with (
        Server() as server,
        Client(f"http://{NAME}:{server.port}", str(tmp_path), max_response_s=BUDGET_S) as c,
    ):
        start = time.monotonic()
        # Execute
        with pytest.raises(ClientError) as info:
            c.check_in(1)
        elapsed = time.monotonic() - start
        # Assert: abandoned at the response budget, as a trickled answer is, no request sent
        assert info.value.reason == "too_slow", info.value
        assert elapsed < BUDGET_S + SLACK_S, f"{elapsed:.2f} s for a {BUDGET_S} s budget"
        assert server.heads == []
        # Assert: once the name resolves again the same client works
        resolver.stall_s = 0.0
        assert c.check_in(1).action == "wait"


def test_a_participate_wait_bounds_a_stalled_lookup(tmp_path: Any, resolver: Resolver) -> None:
    # Prepare
    import numpy as np

    from .test_client_secure import ShiftTrainer

    resolver.stall_s = STALL_S
    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    with Server() as server, Client(f"http://{NAME}:{server.port}", str(tmp_path)) as c:
        start = time.monotonic()
        # Execute: max_wait_s, not max_response_s (600 s), is what is left
        report = c.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=BUDGET_S)
        elapsed = time.monotonic() - start
    # Assert: a wait that expired, within the wait
    assert report is None
    assert elapsed < BUDGET_S + SLACK_S, f"{elapsed:.2f} s for a {BUDGET_S} s max_wait_s"


def test_the_connect_timeout_bounds_a_stalled_lookup(tmp_path: Any, resolver: Resolver) -> None:
    # Prepare: httpx's connect timeout (0.5 s) is shorter than the response budget (5 s)
    resolver.stall_s = STALL_S
    with Server() as server, Client(
        f"http://{NAME}:{server.port}", str(tmp_path), timeout=0.5, retries=1,
        backoff_s=0.0, max_response_s=5.0,
    ) as c:  # fmt: skip
        start = time.monotonic()
        # Execute: a connect timeout is never sent, so it is retried once, then raised
        with pytest.raises(httpx.ConnectTimeout):
            c.check_in(1)
        elapsed = time.monotonic() - start
    # Assert
    assert len(resolver.asked) == 2
    assert elapsed < 2 * 0.5 + SLACK_S, f"{elapsed:.2f} s"


def test_the_resolved_address_is_dialled_with_the_name_as_host(
    tmp_path: Any, resolver: Resolver
) -> None:
    # Prepare: the first address refuses (nothing listens on 127.0.0.2), the second answers
    resolver.addresses = ("127.0.0.2", "127.0.0.1")
    with Server() as server, Client(f"http://{NAME}:{server.port}", str(tmp_path)) as c:
        # Execute
        answer = c.check_in(1)
    # Assert: the next address was tried, and the request still names the coordinator
    assert answer.action == "wait"
    assert resolver.asked == [NAME]
    assert f"host: {NAME}:{server.port}".encode() in server.heads[0].lower()


def test_a_failed_lookup_is_a_connect_error(tmp_path: Any, resolver: Resolver) -> None:
    # Prepare
    resolver.fail = True
    with Client(f"http://{NAME}:1", str(tmp_path), retries=1, backoff_s=0.0) as c:
        # Execute / Assert: never sent, so retried, then the transport error
        with pytest.raises(httpx.ConnectError):
            c.check_in(1)
    assert resolver.asked == [NAME, NAME]


def test_tls_names_the_host_not_the_resolved_address(tmp_path: Any, resolver: Resolver) -> None:
    # Prepare: the socket layer under the client's deadline wrapper is a fake that records
    # the address dialled and the TLS server name, then refuses the handshake
    seen: dict[str, Any] = {}

    class Stream(httpcore.NetworkStream):
        def start_tls(self, ssl_context: Any, server_hostname: Any = None, timeout: Any = None):  # type: ignore[no-untyped-def]
            seen["sni"] = server_hostname
            raise httpcore.ConnectError("handshake refused by the test")

        def close(self) -> None:
            pass

    class Backend(httpcore.NetworkBackend):
        def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            seen["dialled"] = (host, port)
            return Stream()

    with Client(f"https://{NAME}", str(tmp_path), retries=0) as c:
        c._http._transport._pool._network_backend._inner = Backend()  # type: ignore[attr-defined]
        # Execute
        with pytest.raises(httpx.ConnectError):
            c.check_in(1)
    # Assert
    assert seen == {"dialled": ("127.0.0.1", 443), "sni": NAME}


def test_async_a_stalled_lookup_ends_with_max_response_s(tmp_path: Any, resolver: Resolver) -> None:
    # The async client's whole-response bound (asyncio.wait_for) already cancels the lookup,
    # which anyio runs in the loop's executor: this guards it.
    resolver.stall_s = STALL_S

    async def run(port: int) -> tuple[BaseException | None, float]:
        async with AsyncClient(
            f"http://{NAME}:{port}", str(tmp_path), max_response_s=BUDGET_S
        ) as ac:
            start = time.monotonic()
            try:
                await ac.check_in(1)
            except ClientError as err:
                return err, time.monotonic() - start
            finally:
                resolver.release.set()  # or asyncio.run waits for the executor's thread
            return None, time.monotonic() - start

    with Server() as server:
        err, elapsed = asyncio.run(run(server.port))
    assert isinstance(err, ClientError) and err.reason == "too_slow"
    assert elapsed < BUDGET_S + SLACK_S, f"{elapsed:.2f} s"
