"""The sockets `AsyncClient` connects with (`sdk.client._AsyncSocketBackend`): a TCP socket
read and written with the event loop's own socket calls, and TLS over it through memory
buffers, so that an upload the coordinator answers before reading its body gets that answer.
Split off `sdk/client.py`, which imports every name here back.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpcore

_T = TypeVar("_T")


def _socket_readable(sock: socket.socket) -> bool:
    """Whether a read of `sock` would not wait (data, its end, or an error): httpcore's
    `is_readable`, which finds an idle connection the server has closed."""
    if sock.fileno() < 0:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


class _AsyncStream(httpcore.AsyncNetworkStream):
    """What `_AsyncSocket` and `_AsyncTls` share: TLS started on either (an https proxy's
    tunnel is TLS over TLS) is an `_AsyncTls` over it."""

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await _AsyncTls.over(self, ssl_context, server_hostname, timeout)


class _AsyncSocket(_AsyncStream):
    """A connected TCP socket for httpcore, written and read with the event loop's own socket
    calls (`loop.sock_sendall`, `loop.sock_recv`), as httpcore's sync stream writes and reads
    its socket (`Client`'s); each call bounded by its `timeout`, as anyio's stream bounds it.

    In place of anyio's stream (httpx's default), which goes through an asyncio transport that
    closes its socket as soon as a write fails: the answer the coordinator sent to an upload
    before resetting the connection (a 413 or a 503 `busy` to a body it did not read) was
    still in that socket, unread, and httpx raised `ReadError`. A failed write here leaves the
    socket open, and httpcore, which reads the answer after a failed write, gets it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # The tasks waiting in a read or a write, each with its `cancelling()` count when it
        # began; those of them `aclose` cancelled.
        self._waiting: dict[asyncio.Task[Any], int] = {}
        self._woken: set[asyncio.Task[Any]] = set()
        # Set by `aclose`: a read or a write after it raises without touching the socket, as
        # anyio's stream raises `ClosedResourceError` (httpcore: `ReadError`, `WriteError`).
        # The loop's own call would meet a descriptor of -1: asyncio's fails with EBADF, but
        # uvloop's `sock_recv` raises `ValueError`, which no `httpx.TransportError` catches.
        self._closed = False

    async def _wait(self, op: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        """`op` (the loop's `sock_recv` or `sock_sendall` on this socket) within `timeout`.
        An `aclose` meanwhile, from another task, cancels this one, and here that cancel
        becomes `ConnectionAbortedError` (as asyncio's `timeout` turns its own cancel into
        `TimeoutError`), unless the task was also cancelled otherwise: that cancel goes on."""
        task = asyncio.current_task()
        if task is None:  # not in a task: asyncio's `timeout` raises
            op.close()
            raise RuntimeError("an _AsyncSocket is read and written from asyncio tasks")
        self._waiting[task] = task.cancelling()
        try:
            async with asyncio.timeout(timeout):
                return await op
        except asyncio.CancelledError:
            if task in self._woken and task.uncancel() <= self._waiting[task]:
                raise ConnectionAbortedError("the connection was closed") from None
            raise
        finally:
            del self._waiting[task]
            self._woken.discard(task)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._closed:
            raise httpcore.ReadError("the connection was closed")
        try:
            loop = asyncio.get_running_loop()
            return await self._wait(loop.sock_recv(self._sock, max_bytes), timeout)
        except TimeoutError as exc:  # the timeout's, or the kernel's (ETIMEDOUT): as httpcore's
            # sync stream (`Client`'s); anyio's stream raises `ReadError` for the kernel's
            raise httpcore.ReadTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._closed:
            raise httpcore.WriteError("the connection was closed")
        try:
            loop = asyncio.get_running_loop()
            await self._wait(loop.sock_sendall(self._sock, buffer), timeout)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        """Close the socket, waking a read or a write another task waits in (`ReadError`,
        `WriteError`), as anyio's stream does: those tasks are cancelled (`_wait`), and the
        loop's watch on the socket for them removed before it is closed (the cancels would
        remove it a step later, then from whatever socket had got its number; and the
        loop's selector, holding a descriptor closed under it, fails the next socket given
        that number). A read or a write after it raises `ReadError` or `WriteError`."""
        self._closed = True
        for task in self._waiting:
            if task not in self._woken:
                self._woken.add(task)
                task.cancel()
        fd = self._sock.fileno()
        if fd >= 0:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError):  # a proactor loop (Windows): none
                loop.remove_reader(fd)
                loop.remove_writer(fd)
        self._sock.close()

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        if info == "is_readable":
            return _socket_readable(self._sock)
        try:
            if info == "client_addr":
                return self._sock.getsockname()[:2]
            if info == "server_addr":
                return self._sock.getpeername()[:2]
        except OSError:
            return None
        return None


# What an `_AsyncTls` asks of its connection at a time, as anyio's TLS stream does.
_TLS_READ_BYTES = 64 << 10


class _AsyncTls(_AsyncStream):
    """TLS over an `_AsyncSocket` (or over another `_AsyncTls`: an https proxy's tunnel): an
    `ssl.SSLObject` between memory buffers, as anyio's TLS stream, but a failed write ends the
    writing direction only. A record not sent leaves the peer unable to decrypt any written
    after it, but the records the peer sent before (its early answer) still decrypt: anyio's
    stream refuses to read once a write has failed. As httpcore's anyio stream: a read or a
    write is bounded by its `timeout` as a whole; a peer that ends the connection without
    TLS's close_notify ends the stream; a handshake that fails is `httpcore.ConnectError`
    chained from OpenSSL's error (a certificate's: `protocol.tls.certificate_failure` finds it), and
    closes the connection."""

    def __init__(
        self,
        inner: httpcore.AsyncNetworkStream,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None,
    ) -> None:
        self._inner = inner
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = ssl_context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        self._writes_ended = False
        # Set by `aclose`: a read or a write after it raises `_AsyncSocket`'s `ReadError` or
        # `WriteError`, though the SSL object could answer a read from plaintext it decrypted
        # before, and a write after `_writes_ended` would blame an earlier write.
        self._closed = False

    @classmethod
    async def over(
        cls,
        inner: httpcore.AsyncNetworkStream,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float | None,
    ) -> _AsyncTls:
        try:
            tls = cls(inner, ssl_context, server_hostname)
            async with asyncio.timeout(timeout):
                await tls._run(tls._tls.do_handshake, reading=False)
        except BaseException as exc:
            await inner.aclose()
            # The handshake's own timeout, or the kernel's (ETIMEDOUT: the socket's read or
            # write raised httpcore's Read/WriteTimeout): no request was sent either way.
            if isinstance(exc, TimeoutError | httpcore.TimeoutException):
                raise httpcore.ConnectTimeout(str(exc) or "timed out") from exc
            if isinstance(exc, ssl.SSLError | httpcore.NetworkError):
                raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
            raise
        return tls

    async def _run(self, op: Callable[[], _T], *, reading: bool) -> _T:
        """`op` on the SSL object, feeding it what the connection brings while it wants more,
        and sending what it made."""
        while True:
            try:
                result = op()
            except ssl.SSLWantReadError:
                await self._flush(reading)
                data = await self._inner.read(_TLS_READ_BYTES)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            await self._flush(reading)
            return result

    async def _flush(self, reading: bool) -> None:
        """Send what the SSL object wrote. Once a send failed (or was cancelled part-way), what
        it writes is dropped: writing raises, a read goes on (it flushes what a read makes,
        a TLS 1.3 key update's answer, say)."""
        if not self._outgoing.pending:
            return
        data = self._outgoing.read()
        if self._writes_ended:
            if reading:
                return
            raise httpcore.WriteError("an earlier write on this TLS connection failed")
        try:
            await self._inner.write(data)
        except (httpcore.NetworkError, httpcore.TimeoutException):
            # (a write timeout here is the kernel's, ETIMEDOUT: this write has no timeout of
            # its own; a read goes on and meets the dead connection itself)
            self._writes_ended = True
            if not reading:
                raise
        except BaseException:
            self._writes_ended = True
            raise

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._closed:
            raise httpcore.ReadError("the connection was closed")
        try:
            async with asyncio.timeout(timeout):
                return await self._run(lambda: self._tls.read(max_bytes), reading=True)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout("timed out") from exc
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        except ssl.SSLError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._closed:
            raise httpcore.WriteError("the connection was closed")
        try:
            async with asyncio.timeout(timeout):
                await self._run(lambda: self._tls.write(buffer), reading=False)
        except TimeoutError as exc:
            self._writes_ended = True  # part of a record may have gone
            raise httpcore.WriteTimeout("timed out") from exc
        except ssl.SSLError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._closed = True
        await self._inner.aclose()

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._tls
        return self._inner.get_extra_info(info)
