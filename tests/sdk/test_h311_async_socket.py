"""`AsyncClient`'s own network backend (`_AsyncSocketBackend`): connecting and closing as
anyio's backend (httpx's default, which it replaced) did.

`_dial` goes on to a name's next address when a socket of the first one's family cannot be
made (a host without IPv6 gets AAAA answers: getaddrinfo is asked without AI_ADDRCONFIG), as
`socket.create_connection` and anyio do. It races a name's addresses (RFC 8305), as anyio did:
the next dialled 250 ms after the last unless that one failed first, families taking turns,
the first to connect used and the others closed, all within one connect timeout (for a few
commits it dialled them in turn, each with the whole timeout). Closing a connection wakes a
read or a write another task waits in with ReadError or WriteError, as anyio's stream did, and
leaves the event loop no watch on its descriptor; a task cancelled meanwhile still sees its
cancel. Names resolve through a replaced
`socket.getaddrinfo` (the event loop's lookup calls it), so no real DNS is used, and every
address is on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import select
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import pytest

from sdk.client import _AsyncSocketBackend, _AutoBackend
from tests._tls import self_signed
from tests.coordinator.test_service_support import refused_url

NAME = "dual.test"
CONNECT_S = 20.0
_REAL_GETADDRINFO = socket.getaddrinfo
_REAL_SOCKET = socket.socket


def _info(address: tuple[Any, ...]) -> tuple[Any, ...]:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)


@pytest.fixture
def resolve(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """`NAME` resolves to the addresses (getaddrinfo's tuples) the test puts in the list."""
    infos: list[tuple[Any, ...]] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if (host.decode() if isinstance(host, bytes) else host) != NAME:
            return _REAL_GETADDRINFO(host, port, *args, **kwargs)
        return list(infos)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield infos


def _backend() -> _AsyncSocketBackend:
    assert _AutoBackend is not None
    return _AsyncSocketBackend(_AutoBackend())


async def _listener() -> tuple[asyncio.Server, int]:
    """A loopback server that accepts and holds each connection; its port. A connection is
    closed when its peer's is, or when the loop cancels its task at the end of `asyncio.run`
    (left open, the collector closes its socket later, with a ResourceWarning in whatever test
    runs then)."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        finally:
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class _NoIPv6(_REAL_SOCKET):
    """A socket class (for `socket.socket`) of a host without IPv6: making an AF_INET6 socket
    fails with EAFNOSUPPORT, as with ipv6.disable=1."""

    def __init__(self, family: Any = -1, *args: Any, **kwargs: Any) -> None:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, *args, **kwargs)


def test_an_address_family_the_host_cannot_make_a_socket_of_is_skipped(
    resolve: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: no IPv6 on this "host" (socket(AF_INET6) fails with EAFNOSUPPORT, as with
    # ipv6.disable=1), and a name whose first address is IPv6, its second IPv4
    monkeypatch.setattr(socket, "socket", _NoIPv6)

    async def run() -> Any:
        server, port = await _listener()
        resolve[:] = [_info(("::1", port, 0, 0)), _info(("127.0.0.1", port))]
        try:
            stream = await _backend().connect_tcp(NAME, port, timeout=5)
            try:
                return stream.get_extra_info("server_addr")
            finally:
                await stream.aclose()
        finally:
            server.close()
            await server.wait_closed()

    # Execute / Verify: connected to the IPv4 address (it failed: ConnectError [Errno 97])
    assert asyncio.run(run())[0] == "127.0.0.1"


@pytest.fixture
def made() -> Iterator[list[socket.socket]]:
    """The sockets `_record` saw made; closed after the test."""
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def _record(monkeypatch: pytest.MonkeyPatch, made: list[socket.socket]) -> None:
    """Record in `made` every socket made from here on (not those `accept` wraps): called
    once the test's servers are listening."""

    class Recorded(_REAL_SOCKET):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if kwargs.get("fileno") is None and len(args) < 4:
                made.append(self)

    monkeypatch.setattr(socket, "socket", Recorded)


@contextlib.contextmanager
def _black_hole(
    host: str = "127.0.0.1", bound: socket.socket | None = None
) -> Iterator[tuple[str, int]]:
    """A loopback address (`host`, any port; or where `bound`, a socket already bound, is)
    whose connects hang: a listener that never accepts, its backlog filled until a further
    connect is not answered within 0.3 s (Linux drops the SYN of a listener whose accept queue
    is full). The listener is closed on the way out (`bound` too)."""
    listener = bound or _REAL_SOCKET()
    fillers: list[socket.socket] = []
    try:
        if bound is None:
            listener.bind((host, 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(16):
            sock = _REAL_SOCKET()
            fillers.append(sock)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(address)
            if not select.select([], [sock], [], 0.3)[1]:
                break
        else:
            raise AssertionError("the listener's backlog never filled")
        yield address
    finally:
        for sock in (*fillers, listener):
            sock.close()


def test_a_first_address_that_never_answers_does_not_hold_up_the_second(
    resolve: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch, made: list[socket.socket]
) -> None:
    # Prepare: a name whose first address drops SYNs (a black-holed IPv6 route, say) and whose
    # second accepts; a connect timeout of 20 s
    async def run() -> tuple[Any, float]:
        server, port = await _listener()
        try:
            with _black_hole() as hole:
                resolve[:] = [_info(hole), _info(("127.0.0.1", port))]
                _record(monkeypatch, made)
                loop = asyncio.get_running_loop()
                started = loop.time()
                stream = await _backend().connect_tcp(NAME, port, timeout=CONNECT_S)
                took = loop.time() - started
                addr = stream.get_extra_info("server_addr")
                assert [s.fileno() >= 0 for s in made] == [False, True]  # the loser closed
                await stream.aclose()
                return addr, took
        finally:
            server.close()
            await server.wait_closed()

    # Execute
    addr, took = asyncio.run(run())

    # Verify: the second address was dialled 250 ms after the first (RFC 8305, as anyio), so
    # it connected well before the first's attempt could time out (before: after 20 s,
    # the whole connect timeout spent on the first address)
    assert addr == ("127.0.0.1", resolve[1][4][1])
    assert took < CONNECT_S / 2


def test_addresses_none_answers_fail_within_one_connect_timeout(
    resolve: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch, made: list[socket.socket]
) -> None:
    # Prepare: five addresses that never answer; a connect timeout of 1.5 s
    async def run() -> tuple[BaseException, float]:
        with contextlib.ExitStack() as holes:
            resolve[:] = [_info(holes.enter_context(_black_hole())) for _ in range(5)]
            _record(monkeypatch, made)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(httpcore.ConnectTimeout) as raised:
                await _backend().connect_tcp(NAME, 80, timeout=1.5)
            return raised.value, loop.time() - started

    # Execute
    _, took = asyncio.run(run())

    # Verify: all five were dialled, and closed; the whole connect took its timeout, once
    # (before: 1.5 s for each address in turn, 7.5 s)
    assert len(made) == 5 and all(s.fileno() < 0 for s in made)
    assert took < 5.0


def test_refused_addresses_are_dialled_families_interleaved_the_last_error_raised(
    resolve: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch, made: list[socket.socket]
) -> None:
    # Prepare: a name with two IPv6 then two IPv4 addresses, each refused at once
    dialled: list[Any] = []

    async def refuse(sock: socket.socket, address: Any) -> None:
        dialled.append(address[0])
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"refused by {address[0]}")

    async def run() -> BaseException:
        monkeypatch.setattr(asyncio.get_running_loop(), "sock_connect", refuse)
        with pytest.raises(httpcore.ConnectError) as raised:
            await _backend().connect_tcp(NAME, 9, timeout=5)
        return raised.value

    resolve[:] = [_info(a) for a in (("::1", 9, 0, 0), ("::2", 9, 0, 0))]
    resolve += [_info(a) for a in (("127.0.0.1", 9), ("127.0.0.2", 9))]
    _record(monkeypatch, made)

    # Execute
    err = asyncio.run(run())

    # Verify: RFC 8305's order (families alternating, the first answer's first); each refusal
    # started the next at once; the last address's error raised, as socket.create_connection's
    assert dialled == ["::1", "127.0.0.1", "::2", "127.0.0.2"]
    assert "refused by 127.0.0.2" in str(err)
    assert len(made) == 4 and all(s.fileno() < 0 for s in made)


def test_a_connect_cancelled_while_racing_closes_every_attempt(
    resolve: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch, made: list[socket.socket]
) -> None:
    # Prepare: two addresses that never answer, both dialled by the time the connect is
    # cancelled
    async def run() -> None:
        with _black_hole() as a, _black_hole() as b:
            resolve[:] = [_info(a), _info(b)]
            _record(monkeypatch, made)
            connect = asyncio.ensure_future(_backend().connect_tcp(NAME, 80, timeout=30))
            for _ in range(60):  # up to 3 s (before: the second was dialled after 30 s)
                if len(made) == 2:
                    break
                await asyncio.sleep(0.05)
            connect.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connect

    # Execute
    asyncio.run(run())

    # Verify: both attempts' sockets closed
    assert len(made) == 2 and all(s.fileno() < 0 for s in made)


@contextlib.asynccontextmanager
async def _stalled(
    tmp: Path, tls: bool, send: bytes = b""
) -> AsyncIterator[tuple[httpcore.AsyncNetworkStream, int]]:
    """A connection (TLS when `tls`) to a loopback server that writes `send` (none by default)
    as it accepts, then never writes and never reads (past asyncio's stream buffer); the
    server's port."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        if send:
            writer.write(send)

    server_ctx = client_ctx = None
    if tls:
        cert, key = self_signed(tmp, localhost=False)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.create_default_context(cafile=cert)
    server = await asyncio.start_server(hold, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        stream = await _backend().connect_tcp("127.0.0.1", port, timeout=5)
        if client_ctx is not None:
            stream = await stream.start_tls(client_ctx, "127.0.0.1", timeout=5)
        try:
            yield stream, port
        finally:
            await stream.aclose()
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def _waiting(op: Awaitable[Any]) -> asyncio.Future[Any]:
    """`op` in a task of its own, once it waits on its connection."""
    task = asyncio.ensure_future(op)
    await asyncio.sleep(0.3)
    assert not task.done()
    return task


def _watch_same_fd(fd: int) -> asyncio.Future[bytes]:
    """A socket given descriptor number `fd` (socket pairs made until one end gets it),
    watched by the loop for reading, and a byte sent to it: a future of what it reads.
    Made at once, in the step that freed `fd`."""
    loop = asyncio.get_running_loop()
    spare: list[socket.socket] = []
    for _ in range(64):
        pair = socket.socketpair()
        spare += pair
        if fd in (pair[0].fileno(), pair[1].fileno()):
            break
    else:
        for sock in spare:
            sock.close()
        raise AssertionError(f"descriptor {fd} not reused")
    this, other = pair if pair[0].fileno() == fd else pair[::-1]
    for sock in spare[:-2]:
        sock.close()
    got: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(fd)
        got.set_result(this.recv(1))
        this.close()
        other.close()

    loop.add_reader(fd, readable)
    other.send(b"x")
    return got


PIPES = pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])


@PIPES
def test_closing_a_connection_wakes_its_waiting_read_with_a_read_error(
    tmp_path: Path, tls: bool
) -> None:
    # Prepare: a read waiting (30 s timeout) on a connection to a server that never answers
    async def run() -> tuple[BaseException | None, bytes]:
        async with _stalled(tmp_path, tls) as (stream, _):
            fd = stream.get_extra_info("socket").fileno()
            read = await _waiting(stream.read(100, timeout=30))

            # Execute: another task closes the connection, and a new socket gets its
            # descriptor number at once
            await stream.aclose()
            reused = _watch_same_fd(fd)
            done, _ = await asyncio.wait({read, reused}, timeout=5)
            assert read in done, "the read went on waiting after its connection closed"
            assert reused in done, "the loop lost its watch on the new socket"
            return read.exception(), reused.result()

    err, echoed = asyncio.run(run())

    # Verify: the read raised ReadError at once (before: it waited out its timeout, then
    # ReadTimeout), and a new socket on the same descriptor number works (before: the loop
    # kept the closed one's registration: FileNotFoundError [Errno 2] from the selector; had
    # only the read been cancelled, its clean-up a step later removed the new socket's watch)
    assert isinstance(err, httpcore.ReadError)
    assert echoed == b"x"


@PIPES
def test_closing_a_connection_wakes_its_waiting_write_with_a_write_error(
    tmp_path: Path, tls: bool
) -> None:
    # Prepare: a 64 MiB write waiting (30 s timeout) for room on a connection to a server
    # that reads nothing
    async def run() -> BaseException | None:
        async with _stalled(tmp_path, tls) as (stream, _):
            write = await _waiting(stream.write(b"\0" * (64 << 20), timeout=30))

            # Execute: another task closes the connection
            await stream.aclose()
            done, _ = await asyncio.wait({write}, timeout=5)
            assert done, "the write went on waiting after its connection closed"
            return write.exception()

    # Verify: the write raised WriteError at once (before: WriteTimeout after 30 s)
    assert isinstance(asyncio.run(run()), httpcore.WriteError)


@PIPES
@pytest.mark.parametrize("first", ["cancel", "close"])
def test_a_read_cancelled_as_its_connection_closes_is_cancelled(
    tmp_path: Path, tls: bool, first: str
) -> None:
    # Prepare: a read waiting on a connection
    async def run() -> asyncio.Future[Any]:
        async with _stalled(tmp_path, tls) as (stream, _):
            read = await _waiting(stream.read(100, timeout=30))

            # Execute: its task is cancelled, and the connection closed, in the same step
            if first == "cancel":
                read.cancel()
                await stream.aclose()
            else:
                close = asyncio.ensure_future(stream.aclose())
                await asyncio.sleep(0)
                read.cancel()
                await close
            await asyncio.wait({read}, timeout=5)
            return read

    # Verify: the task sees its cancel, not the connection's close
    assert asyncio.run(run()).cancelled()


@pytest.mark.parametrize("kernel", ["recv", "send"])
def test_a_kernel_timeout_during_the_tls_handshake_is_a_connect_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    # Prepare: a plain connection to a loopback server; then the socket's receive (or send)
    # fails as recv(2) / send(2) do once the kernel gave up on the peer (ETIMEDOUT: keepalive
    # or TCP_USER_TIMEOUT), during the TLS handshake
    cert, _ = self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))

    async def timed_out(*args: Any) -> Any:
        raise TimeoutError(errno.ETIMEDOUT, "Connection timed out")

    async def run() -> tuple[BaseException, socket.socket]:
        server, port = await _listener()
        try:
            stream = await _backend().connect_tcp("127.0.0.1", port, timeout=5)
            sock = stream.get_extra_info("socket")
            loop = asyncio.get_running_loop()
            monkeypatch.setattr(
                loop, "sock_recv" if kernel == "recv" else "sock_sendall", timed_out
            )
            # Execute
            with pytest.raises(httpcore.ConnectTimeout) as raised:
                await stream.start_tls(context, "127.0.0.1", timeout=5)
            return raised.value, sock
        finally:
            server.close()
            await server.wait_closed()

    # Verify: a connect timeout naming the kernel's error (before: the read's ReadTimeout or
    # the write's WriteTimeout, which httpx reports as a request that may have been taken,
    # "lost the connection to", though nothing was sent), and the socket closed
    exc, sock = asyncio.run(run())
    assert "Connection timed out" in str(exc)
    assert sock.fileno() < 0


def test_a_local_address_dials_only_the_addresses_of_its_family(
    resolve: list[tuple[Any, ...]], made: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a name with an IPv4 and an IPv6 address, both on a closed port (held on IPv4
    # while the test runs, so that no other process's server takes it); the attempts bind to
    # an IPv4 local address
    with refused_url() as url:
        port = int(url.rsplit(":", 1)[1])
        resolve[:] = [_info(("127.0.0.1", port)), _info(("::1", port, 0, 0))]
        _record(monkeypatch, made)

        async def run(local: str) -> BaseException:
            with pytest.raises(httpcore.ConnectError) as raised:
                await _backend().connect_tcp(NAME, port, timeout=5, local_address=local)
            return raised.value

        # Execute
        refused = asyncio.run(run("127.0.0.1"))
        no_v6 = asyncio.run(run("::1"))  # a name with no IPv6 address would say so
        resolve[:] = [_info(("127.0.0.1", port))]
        none_of_family = asyncio.run(run("::1"))

    # Verify: only the IPv4 address was dialled, and its refusal is the error raised (before:
    # the IPv6 attempt, last in order, failed at its bind and hid it: "Address family for
    # hostname not supported"); with no address of the local address's family, the error
    # says so; every socket closed
    assert f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port})" in str(refused)
    assert "::1" in str(no_v6) and "Address family" not in str(no_v6), no_v6
    assert "has no IPv6 address, the family of local_address ::1" in str(none_of_family)
    assert all(s.fileno() < 0 for s in made)
