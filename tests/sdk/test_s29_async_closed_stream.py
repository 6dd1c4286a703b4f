"""`AsyncClient`'s own network backend after a connection is closed, and `_dial` when an attempt
connects in the step another fails with an error that is not an `OSError`.

A read or a write on an `_AsyncSocket` (or an `_AsyncTls` over it) after `aclose` raises
`httpcore.ReadError` or `WriteError` without touching the socket, as anyio's stream raises
`ClosedResourceError` (httpcore: `ReadError`, `WriteError`). It used to hand the closed socket
(descriptor -1) to the event loop: asyncio's `sock_recv` fails with EBADF (`ReadError`), but
uvloop's registers a reader first and raises `ValueError("Invalid file descriptor: -1")`,
which escaped the SDK's `except httpx.TransportError`. uvloop is not installed here: the tests
replace the running loop's `sock_recv` with one that raises as uvloop's does for descriptor -1
(found by helper-315, /work/notes/s29/h315/read_after_close.out). A TLS read woken by `aclose`
while it flushes what the SSL object wrote goes on to read the connection: the same
`ReadError`. An `_AsyncTls` remembers it was closed: a read after `aclose` raises that
`ReadError` even when the SSL object holds plaintext it decrypted before (it returned that), and
a write raises that `WriteError` even when an earlier write ended its writing (it raised "an
earlier write on this TLS connection failed").

`_dial` closes the socket of an attempt that connected when another attempt, done in the same
step, raised an error that is not an `OSError` (a socket option of the wrong type, say); that
error is raised. Before, the winner had left the race's running set, so it was never closed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpcore
import pytest

import sdk.client as sdk_client
from tests.sdk.test_h311_async_socket import _stalled

_REAL_WAIT = asyncio.wait


def _uvloop_like_sock_recv(loop: asyncio.AbstractEventLoop) -> None:
    """The loop's `sock_recv` raises `ValueError` for a closed socket, as uvloop's does (it
    registers a reader for the descriptor before it tries to read)."""
    real = loop.sock_recv

    async def sock_recv(sock: socket.socket, n: int) -> bytes:
        if sock.fileno() < 0:
            raise ValueError(f"Invalid file descriptor: {sock.fileno()}")
        return await real(sock, n)

    loop.sock_recv = sock_recv  # type: ignore[method-assign,assignment]


async def _outcome(op: Coroutine[Any, Any, Any]) -> BaseException | None:
    try:
        await asyncio.wait_for(op, 5)
    except Exception as exc:  # noqa: BLE001 - the test looks at which it is
        return exc
    return None


PIPES = pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])


@PIPES
def test_a_read_after_the_connection_closed_is_a_read_error(tmp_path: Path, tls: bool) -> None:
    # Prepare: a connection, closed; the loop's sock_recv fails on a closed socket as
    # uvloop's does
    async def run() -> BaseException | None:
        _uvloop_like_sock_recv(asyncio.get_running_loop())
        async with _stalled(tmp_path, tls) as (stream, _):
            await stream.aclose()

            # Execute: a read
            return await _outcome(stream.read(100, timeout=2))

    err = asyncio.run(run())

    # Verify: ReadError, as anyio's stream gives (before: uvloop's ValueError, which is no
    # httpx.TransportError; with asyncio's loop, ReadError [Errno 9])
    assert isinstance(err, httpcore.ReadError), repr(err)
    assert "closed" in str(err)


@PIPES
def test_a_write_after_the_connection_closed_is_a_write_error(tmp_path: Path, tls: bool) -> None:
    # Prepare: a connection, closed
    async def run() -> BaseException | None:
        async with _stalled(tmp_path, tls) as (stream, _):
            await stream.aclose()

            # Execute: a write
            return await _outcome(stream.write(b"x" * 100, timeout=2))

    err = asyncio.run(run())

    # Verify: WriteError, the socket not touched (before: WriteError [Errno 9] from the loop's
    # sock_sendall, with asyncio's loop and with uvloop alike)
    assert isinstance(err, httpcore.WriteError), repr(err)
    assert "closed" in str(err)


async def _fill(stream: sdk_client._AsyncTls, sock: socket.socket) -> None:
    """Send records on `stream`'s socket (past the stream) until the kernel takes no more:
    the server's stream buffers some, then stops reading. The server runs on this loop, so it
    reads only while this waits: done once a wait of 0.05 s freed no room at all (twice in a
    row), not after a fixed number of waits (under load the server had not stopped reading
    after three, and the read's flush went through; CI saw that)."""
    # A fixed send buffer: the kernel no longer grows it (tcp_wmem autotuning) after the fill
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    record = b""
    idle = 0
    for _ in range(400):  # 20 s of waits at most
        await asyncio.sleep(0.05)
        sent = 0
        while True:
            if not record:
                stream._tls.write(b"\0" * (16 << 10))
                record = stream._outgoing.read()
            try:
                n = sock.send(record)
            except BlockingIOError:
                break
            record = record[n:]
            sent += n
        idle = idle + 1 if sent == 0 else 0
        if idle == 2:
            return
    raise AssertionError("the server never stopped reading")


def test_a_tls_read_woken_in_its_flush_by_a_close_is_a_read_error(tmp_path: Path) -> None:
    # Prepare: a TLS connection whose socket's send buffer is full (the server reads no more),
    # a record pending in the SSL object's outgoing buffer, and a read that flushes it first:
    # it waits in the connection's write. The loop's sock_recv fails on a closed socket as
    # uvloop's does
    async def run() -> BaseException | None:
        _uvloop_like_sock_recv(asyncio.get_running_loop())
        async with _stalled(tmp_path, tls=True) as (stream, _):
            assert isinstance(stream, sdk_client._AsyncTls)
            sock = stream.get_extra_info("socket")
            await _fill(stream, sock)
            stream._tls.write(b"pending")
            read = asyncio.ensure_future(stream.read(100, timeout=30))
            await asyncio.sleep(0.3)
            assert not read.done()

            # Execute: another task closes the connection
            await stream.aclose()
            done, _ = await asyncio.wait({read}, timeout=5)
            assert done, "the read went on waiting after its connection closed"
            assert stream._writes_ended, "the read was not in its flush"
            return read.exception()

    err = asyncio.run(run())

    # Verify: the write the close woke failed (ended writing; a read goes on), and the read
    # that followed on the closed connection is ReadError (before: uvloop's ValueError)
    assert isinstance(err, httpcore.ReadError), repr(err)


def test_a_tls_read_after_the_connection_closed_is_a_read_error_with_plaintext_buffered(
    tmp_path: Path,
) -> None:
    # Prepare: a TLS connection whose server sent two records' worth (32 KiB); a read of 10
    # bytes, after which the SSL object holds the rest of the first record decrypted; then
    # the connection closed
    async def run() -> tuple[int, bytes | BaseException]:
        async with _stalled(tmp_path, tls=True, send=b"a" * (32 << 10)) as (stream, _):
            assert isinstance(stream, sdk_client._AsyncTls)
            assert await stream.read(10, timeout=5) == b"a" * 10
            buffered = stream._tls.pending()
            await stream.aclose()

            # Execute: a read
            try:
                return buffered, await asyncio.wait_for(stream.read(100, timeout=2), 5)
            except Exception as exc:  # noqa: BLE001 - the test looks at which it is
                return buffered, exc

    buffered, got = asyncio.run(run())

    # Verify: the plaintext was there, and the read is ReadError as on the socket (before:
    # the SSL object's plaintext returned, 100 bytes of it, as if the connection were open)
    assert buffered > 0
    assert isinstance(got, httpcore.ReadError), repr(got)[:80]
    assert str(got) == "the connection was closed"


def test_a_tls_write_after_its_writes_ended_and_a_close_is_the_closed_write_error(
    tmp_path: Path,
) -> None:
    # Prepare: a TLS connection to a server that reads no more than its buffers take; a 64 MiB
    # write that timed out on it (which ends the stream's writing direction); then the
    # connection closed
    async def run() -> BaseException | None:
        async with _stalled(tmp_path, tls=True) as (stream, _):
            assert isinstance(stream, sdk_client._AsyncTls)
            with pytest.raises(httpcore.WriteTimeout):
                await stream.write(b"x" * (64 << 20), timeout=0.5)
            assert stream._writes_ended
            await stream.aclose()

            # Execute: a write
            return await _outcome(stream.write(b"x" * 100, timeout=2))

    err = asyncio.run(run())

    # Verify: WriteError with the socket's message (before: 'an earlier write on this TLS
    # connection failed', the open stream's message)
    assert isinstance(err, httpcore.WriteError), repr(err)
    assert str(err) == "the connection was closed"


@pytest.mark.parametrize("first", ["connected", "failed"])
def test_an_attempt_that_connected_as_another_failed_otherwise_is_closed(
    monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    # Prepare: a race of two addresses, both dialled at once and both done in the same step:
    # the first connects (one end of a socket pair), the second fails with a ValueError (not
    # an OSError: a socket option of the wrong type, say). The race sees its done attempts in
    # a set's order, which hashing decides; here in the order `first` names
    made: list[socket.socket] = []

    async def dial_one(info: Any, local_address: Any, options: Any) -> socket.socket:
        if info[4][0] == "127.0.0.9":
            pair = socket.socketpair()
            made.extend(pair)
            return pair[0]
        raise ValueError("a bad option for this family, say")

    async def ordered_wait(aws: Any, **kwargs: Any) -> tuple[list[Any], set[Any]]:
        done, pending = await _REAL_WAIT(aws, **kwargs)
        if kwargs.get("return_when") == asyncio.FIRST_COMPLETED:  # the race's, not its end's
            assert len(done) == 2, "both attempts end in the same step"
        in_order = sorted(done, key=lambda a: a.exception() is None, reverse=first == "connected")
        return in_order, pending

    infos = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.9", 9)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.10", 9)),
    ]
    monkeypatch.setattr(sdk_client, "_dial_one", dial_one)
    monkeypatch.setattr(sdk_client, "_interleaved", lambda _: infos)
    monkeypatch.setattr(sdk_client, "_NEXT_ADDRESS_S", 0.0)

    async def run() -> None:
        monkeypatch.setattr(asyncio, "wait", ordered_wait)
        try:
            await sdk_client._dial("127.0.0.1", 9, 5.0, None, ())
        finally:
            monkeypatch.setattr(asyncio, "wait", _REAL_WAIT)

    # Execute
    try:
        with pytest.raises(ValueError, match="a bad option"):
            asyncio.run(run())

        # Verify: the ValueError raised, and the connected attempt's socket closed (before:
        # left open when the race saw the connected attempt first)
        assert len(made) == 2 and made[0].fileno() < 0
    finally:
        for sock in made:
            sock.close()
