"""Running the coordinator under uvicorn: blocking `serve`, or `ServerThread` on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from coordinator.aggregators._base import finite_number, shown

try:  # the kernel's send queue of a socket (Linux); elsewhere progress is seen less finely
    import fcntl
    import termios

    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):
    _TIOCOUTQ = None

from ._ratelimit import EveryFew
from .app import create_app
from .metrics import plume_version
from .rounds import MAX_BODY_TIMEOUT_S, ServiceConfig
from .store import SCHEMA_VERSION, Store, others_may_read
from .wire import HEAD_BYTES

__all__ = [
    "HEAD_TIMEOUT_S",
    "SEND_TIMEOUT_S",
    "SHUTDOWN_GRACE_S",
    "ListenError",
    "serve",
    "ServerThread",
    "uvicorn_config",
]

log = logging.getLogger("plume.coordinator")

# Seconds a connection may wait for a request head to arrive in full (see CountingH11Protocol):
# uvicorn's keep-alive timeout, so a new connection waits as long as an idle one between
# requests does. A head is a few hundred bytes: a second or two on the slowest mobile link.
HEAD_TIMEOUT_S = 30.0
# Seconds a connection may leave an answer unread (see CountingH11Protocol): nginx's
# send_timeout. Progress is any byte of the answer the client's kernel acknowledged: a slow link
# acknowledges at its own rate; an app that reads slowly, each time its kernel reopens the
# receive window (Linux: once a share of its buffer is free).
SEND_TIMEOUT_S = 60.0
# uvicorn's keep-alive timeout (seconds without a byte after a response, before closing).
_KEEP_ALIVE_S = 30
# Seconds a stop (SIGTERM, SIGHUP, Ctrl-C, `ServerThread.stop`) waits for requests in flight
# to finish before it answers those still running 503 `shutting_down` (`_Server`). A 24 KB
# update at 2G speeds takes about 10 s to arrive; systemd's stop timeout is 90 s.
SHUTDOWN_GRACE_S = 10.0
# A connection already closing with no request running and nothing left to send (an idle TLS
# keep-alive connection whose peer does not answer the close) is cut this long into a stop: it would otherwise hold
# the stop for the whole grace.
_IDLE_CLOSE_S = 1.0
# After the grace: how long the 503s just sent get to go out before connections still open
# are cut, and how much longer uvicorn's own limit waits before it cancels what is left (it
# logs that at ERROR; the grace's end should have left nothing for it).
_AFTER_GRACE_S = 0.5
_UVICORN_BACKSTOP_S = 5


class _AccessQueryFilter(logging.Filter):
    """Redact the query values of uvicorn's access log line (`uvicorn.access`): the path
    keeps each key, its value becomes `<redacted>` (`?train_loss=2.4576` ->
    `?train_loss=<redacted>`; a part without `=` is `<redacted>` whole). An upload's query is
    the device's training loss, a function of its data (docs/privacy.md), and the log line is
    the only place it would leave the database (s45/privacy finding 3)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's '%s - "%s %s HTTP/%s" %d': (client, method, path?query, version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def redact_query(target: str) -> str:
    """`target` (a request's path and query) with each query value `<redacted>`."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    parts = (p.partition("=") for p in query.split("&"))
    return path + "?" + "&".join(f"{k}=<redacted>" if eq else "<redacted>" for k, eq, _ in parts)


_ACCESS_QUERY_FILTER = _AccessQueryFilter()


# At most one line every few seconds for a 400 that h11 would not let out (`send_400_response`).
_bad_request_log = EveryFew(5.0)


def _buffered(conn: h11.Connection) -> int:
    """How many received bytes `conn` holds unparsed. `trailing_data` copies the whole buffer,
    which made a long run of pipelined requests cost quadratic time (helper-205), so h11's own
    buffer is measured where it has one (its length is kept; a private name, hence the
    fallback)."""
    buf = getattr(conn, "_receive_buffer", None)
    return len(buf) if buf is not None else len(conn.trailing_data[0])


class CountingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, which also puts the size of each request's head as it arrived
    (request line, header lines, blank line) in the request's scope, under
    `scope["extensions"][HEAD_BYTES]`, for the wire middleware to count.

    h11 hands the app headers without the optional whitespace around each value, so the head
    the ledger rebuilt from them missed whatever spacing a client sent: up to the whole head,
    tens of KB of padding per request, uncounted (helper-202's F5). The size is what h11 took
    from its receive buffer for the request event, pipelined requests included (each is parsed
    from the buffer when its turn comes).

    It also closes a connection whose request head does not arrive in full within
    `head_timeout_s` seconds (0: no limit) of the connection opening, or of the first byte of
    a head after a response, and one still sending, that long after its next byte arrived, the
    body of a request already answered (uvicorn reads such a body to its end). uvicorn has
    no timer before a connection's first request, and its keep-alive timer, started after a
    response, stops at the next byte: a client that sent part of a head and stopped, or
    trickled it, held its connection (and a file descriptor) forever, and a few hundred of
    them left the coordinator unable to accept anyone (helper-228). Bodies the app reads have
    their own deadline (`ServiceConfig.body_timeout_s`, the wire middleware). An idle
    keep-alive connection is still closed by uvicorn's keep-alive timeout alone.

    And it closes (aborts) a connection whose client has read nothing of an answer for
    `send_timeout_s` seconds (0: no limit): the timer starts when the transport's write
    buffer passes its high-water mark (asyncio's 64 KiB, `pause_writing`) and stops when the
    client has read it down to the low-water mark (16 KiB, `resume_writing`); when it fires,
    a client that has read anything since (the bytes queued, in the kernel's send queue
    too, fell: `_queued`) gets another `send_timeout_s`. So a slow link that keeps reading is
    not cut: its kernel acknowledges what arrives, at the link's rate. A client whose app
    reads slowly acknowledges only when its kernel reopens its receive window (Linux: once a
    share of the buffer is free), and is cut if that takes a whole timeout. Where the kernel's
    queue cannot be asked (no TIOCOUTQ: not Linux), only the transport's own buffer shows
    progress, and a slow reader can be cut while the kernel's
    send buffer (up to a few MB) drains. Large answers go to the transport in parts
    (`wire.SEND_PART`), each once the one before has drained, so an unread answer holds about
    one part of this process's memory, not the whole answer. Before, a model download sent its
    whole body at once, and a client that never read held it (a 6 MB snapshot: about 4 MB in
    this process, the rest in the kernel) for as long as it kept the connection open:
    300 such connections took the coordinator from 141 MB to 1.4 GB (helper-385)."""

    head_timeout_s: float = HEAD_TIMEOUT_S
    send_timeout_s: float = SEND_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._send_mark: int | None = None  # bytes queued when the send timer started
        # The client sent bytes h11 refused while its request is answered: no more are read.
        self._deaf = False
        conn = self.conn
        parse = conn.next_event

        def next_event() -> Any:
            if conn.their_state is not h11.IDLE:
                return parse()  # a body or the end of one: the app counts body bytes
            before = _buffered(conn)
            event = parse()
            if isinstance(event, h11.Request):
                self._head_bytes = before - _buffered(conn)
            return event

        setattr(conn, "next_event", next_event)  # noqa: B010 (a method, shadowed per instance)

    def handle_events(self) -> None:
        scope = self.scope
        super().handle_events()
        # A request read just now has a new scope; its app task has not started yet (it was
        # only scheduled), so the size is there before the app reads the scope.
        if self._head_bytes is not None and self.scope is not scope and self.scope is not None:
            extensions = self.scope.setdefault("extensions", {})  # type: ignore[typeddict-item]
            extensions[HEAD_BYTES] = {"bytes": self._head_bytes}
        self._head_bytes = None
        self._watch_head()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's plain-text 400 to a request its parser refused, without the body on a
        HEAD request's answer, and not at all once an answer to the request has started
        (the connection is closed, as uvicorn closes it after its 400). uvicorn wrote the body
        whatever the method: h11 refused it for a HEAD ("Too much data for declared
        Content-Length"), and each `HEAD` with a bad chunk logged a traceback of some 50 lines
        at ERROR (s44 review). uvicorn's WARNING line "Invalid HTTP request received." stays
        the one line of such a request; anything else h11 refuses logs one line at most
        every few seconds (`EveryFew`).

        Bytes that come after a whole request the app has yet to answer (after a request
        with `Connection: close`, anything is an error to h11) get no 400 either: the app's
        own answer goes out and the connection closes after it, the rest unread. Before,
        uvicorn's 400 went out first, and the app's answer then failed in h11 with an ERROR
        traceback of some 50 lines, for anyone who sent one stray byte at the right moment
        (helper-387)."""
        conn = self.conn
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            cycle.keep_alive = False
            self._deaf = True  # what comes next is dropped (`data_received`)
            self.flow.pause_reading()
            # h11 parses nothing more (the client's side is in ERROR): what it holds of the
            # stray bytes (a read or two, 256 KiB each at most) is freed now, not at the close.
            buf = getattr(conn, "_receive_buffer", None)  # h11's, as `_buffered` measures it
            if buf is not None:
                setattr(conn, "_receive_buffer", type(buf)())  # noqa: B010 (a private name)
            return
        try:
            if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                pass  # an answer has started or been sent: nothing more can go out
            elif getattr(conn, "_request_method", None) == b"HEAD":
                response = h11.Response(
                    status_code=400,
                    headers=[
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"connection", b"close"),
                    ],
                    reason=b"Bad Request",
                )
                self.transport.write(conn.send(response) or b"")
                self.transport.write(conn.send(h11.EndOfMessage()) or b"")
            else:
                super().send_400_response(msg)
                return  # it closed the transport
        except h11.LocalProtocolError as exc:
            if (skipped := _bad_request_log()) is not None:
                log.warning(
                    "could not answer 400 to a request the HTTP parser refused (%s); the "
                    "connection is closed%s",
                    exc,
                    _bad_request_log.since(skipped),
                )
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        """Bytes received, parsed; on a connection whose client sent bytes h11 refused
        after a request still being answered (`send_400_response`), dropped unread, and reading
        stops again. uvicorn's `receive` resumes reading each time the app reads, as the wire
        middleware's `client_gone` does before each part of a large answer: each part let up
        to 256 KiB more of whatever the client went on sending into h11's buffer, where nothing
        parses or frees it, and logged uvicorn's WARNING once more. A client that pushed
        garbage while it read a download held 10.8 MB of the coordinator by its end (s46
        review). Reading is still resumed, so a close is still seen (`connection_lost`)."""
        if self._deaf:
            self.flow.pause_reading()
            return
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()  # the first head: counted from the connection opening

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_send_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client is not keeping up with what is sent: it must read some of it within
        `send_timeout_s`."""
        super().pause_writing()
        if self._send_timer is None and self.send_timeout_s > 0:
            self._send_mark = self._queued()
            self._send_timer = self.loop.call_later(self.send_timeout_s, self._send_timed_out)

    def resume_writing(self) -> None:
        self._disarm_send_timer()
        self._send_mark = None
        super().resume_writing()

    def _disarm_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _queued(self) -> int | None:
        """Bytes of answers not yet taken by the client: this transport's buffer and the
        kernel's send queue (Linux's TIOCOUTQ: sent but not acknowledged, or not yet sent).
        While writing is paused nothing is added, so the sum falls exactly as the client
        reads. None where the kernel's queue cannot be asked."""
        sock = self.transport.get_extra_info("socket")
        if sock is None or _TIOCOUTQ is None:
            return None
        try:
            raw = fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return None
        kernel: int = struct.unpack("i", raw)[0]
        return kernel + self.transport.get_write_buffer_size()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self.transport.is_closing() and not self.transport.get_write_buffer_size():
            return
        now = self._queued()
        if now is not None and self._send_mark is not None and now < self._send_mark:
            # It read some: a slow link, not a stalled one. The kernel's buffer (up to a few
            # MB) must empty by a third before the transport can write again, so the pause
            # can outlast the timeout on a link that keeps reading.
            self._send_mark = now
            self._send_timer = self.loop.call_later(self.send_timeout_s, self._send_timed_out)
            return
        # One line per connection cut, hence debug, as for a head that never came.
        log.debug(
            "cutting the connection from %s: it read none of its answer for %g s",
            "{}:{}".format(*self.client) if self.client else "a client",
            self.send_timeout_s,
        )
        # Not close(): that waits for the buffer to be sent, which is what never happens.
        # connection_lost follows, which ends the app's wait to write (uvicorn's drain).
        self.transport.abort()

    def _watch_head(self) -> None:
        """After the received bytes were parsed: a deadline while the connection waits for the
        rest of a head (between requests, with part of one received) or drains the body of a
        request already answered; none once a request's head has arrived (its body is the
        app's to time). Between requests with nothing received, the timer armed when the
        connection opened stays (the first request), else uvicorn's keep-alive timer runs."""
        conn = self.conn
        ours, theirs = conn.our_state, conn.their_state
        if ours is h11.IDLE and theirs is h11.IDLE:
            if _buffered(conn):
                self._arm_head_timer()
            elif self.scope is not None:  # not the first request: keep-alive's turn
                self._disarm_head_timer()
        elif ours is h11.DONE and theirs is h11.SEND_BODY:
            self._arm_head_timer()
        else:
            self._disarm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self.head_timeout_s > 0:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        # One line per connection closed, hence debug: many of them are what it guards against.
        log.debug(
            "closing the connection from %s: no complete request head within %g s",
            "{}:{}".format(*self.client) if self.client else "a client",
            self.head_timeout_s,
        )
        try:
            self.conn.send(h11.ConnectionClosed())  # as uvicorn's keep-alive timeout does
        except h11.LocalProtocolError:
            pass
        self.transport.close()


def _check_head_timeout(head_timeout_s: float, name: str = "head_timeout_s") -> float:
    """A head or send timeout: 0 (no limit), else a number of seconds up to a day
    (MAX_BODY_TIMEOUT_S, the bound `serve --head-timeout/--send-timeout` and the body timeout
    share; 1e300 was taken here, where the CLI refused it)."""
    if (
        not isinstance(head_timeout_s, int | float)
        or isinstance(head_timeout_s, bool)
        or not finite_number(head_timeout_s)
        or not 0 <= head_timeout_s <= MAX_BODY_TIMEOUT_S
    ):
        raise ValueError(
            f"{name} must be 0 (no limit) or a positive number of seconds up to "
            f"{MAX_BODY_TIMEOUT_S:g} (a day), got {shown(head_timeout_s)}"
        )
    return float(head_timeout_s)


def _check_send_timeout(send_timeout_s: float) -> float:
    return _check_head_timeout(send_timeout_s, "send_timeout_s")


def _check_shutdown_grace(shutdown_grace_s: float) -> float:
    if (
        not isinstance(shutdown_grace_s, int | float)
        or isinstance(shutdown_grace_s, bool)
        or not finite_number(shutdown_grace_s)
        or shutdown_grace_s < 0
    ):
        raise ValueError(
            f"shutdown_grace_s must be a number of seconds >= 0 (0: requests in flight are "
            f"answered 503 at once), got {shown(shutdown_grace_s)}"
        )
    return float(shutdown_grace_s)


def _protocol(
    head_timeout_s: float, send_timeout_s: float = SEND_TIMEOUT_S
) -> type[CountingH11Protocol]:
    """`CountingH11Protocol` with its head and send deadlines (uvicorn builds the protocol
    itself)."""
    if (head_timeout_s, send_timeout_s) == (
        CountingH11Protocol.head_timeout_s,
        CountingH11Protocol.send_timeout_s,
    ):
        return CountingH11Protocol
    head, send = head_timeout_s, send_timeout_s

    class Protocol(CountingH11Protocol):
        head_timeout_s = head
        send_timeout_s = send

    return Protocol


def uvicorn_config(
    app: Any,
    host: str,
    port: int,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_key_password: str | None = None,
    log_level: str = "warning",
    access_log: bool = True,
    head_timeout_s: float = HEAD_TIMEOUT_S,
    shutdown_grace_s: float = SHUTDOWN_GRACE_S,
    send_timeout_s: float = SEND_TIMEOUT_S,
) -> uvicorn.Config:
    """Uvicorn settings the ledger relies on: no `server`/`date` headers (the app counts every
    response header it sends, so uvicorn must not add its own), h11 with each request head's
    size as it arrived (`CountingH11Protocol`; httptools, which uvicorn would pick when
    installed, is not used), asyncio's own event loop (uvicorn's "auto" would pick uvloop when
    installed, as `uvicorn[standard]` brings it: the early answers and the stop's handling of
    connections are tested on asyncio's), one process, TLS if given (`tls_key_password`: an
    encrypted key's passphrase, which uvicorn would otherwise ask the terminal for). A request
    head must arrive in full
    within `head_timeout_s` (0: no limit; `CountingH11Protocol`), and a client must read its
    answer, `send_timeout_s` at the most between two drains of the write buffer (0: no
    limit; `CountingH11Protocol`). A stop waits
    `shutdown_grace_s` for requests in flight when run by `_Server` (which `serve` and
    `ServerThread` use); uvicorn's own limit, a few seconds later, is only a backstop.

    No `limit_concurrency`: uvicorn counts open connections against it, those still waiting
    for a head included, and answers 503 to the requests of any connection past it; held-open
    connections would then turn devices away before the file descriptors ran out.

    The access log's lines (`access_log`) carry each request's query keys, not their values
    (`_AccessQueryFilter`, on the `uvicorn.access` logger, which building the config sets
    up)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_protocol(_check_head_timeout(head_timeout_s), _check_send_timeout(send_timeout_s)),
        loop="asyncio",
        log_level=log_level,
        access_log=access_log,
        server_header=False,
        date_header=False,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        ssl_keyfile_password=tls_key_password,
        timeout_keep_alive=_KEEP_ALIVE_S,
        # `_Server` ends the grace itself (503s, no ERROR line); this is a backstop.
        timeout_graceful_shutdown=math.ceil(
            _check_shutdown_grace(shutdown_grace_s) + _UVICORN_BACKSTOP_S
        ),
        lifespan="on",
    )
    # After uvicorn's logging set-up (`Config` runs it), which keeps a logger's filters.
    logging.getLogger("uvicorn.access").addFilter(_ACCESS_QUERY_FILTER)
    return config


class _Server(uvicorn.Server):
    """uvicorn's server with the end of a stop's grace handled here, and SIGHUP taken as
    SIGTERM (a graceful stop; in the main thread only, as uvicorn's own signals).

    A stop (SIGTERM, SIGHUP, Ctrl-C, `should_exit`) closes the listening sockets and the idle
    connections, then waits up to `shutdown_grace_s` for the requests in flight. uvicorn's
    own end of that wait logged "Cancel N running task(s)" at ERROR, cancelled each request,
    and answered one whose answer had not started with its plain-text 500 after an "Exception
    in ASGI application" traceback (s25/ops finding 1). At the grace's end this server instead
    (one WARNING line): closes the connections whose answer is still going out (a slow
    download, whether its request still runs or handed its answer over whole and it waits in
    the write buffer; the client sees the connection close mid-answer and asks again), then
    cancels the requests still running, which the app answers 503 `shutting_down` with
    `Retry-After` and `connection: close` (app.py, `_ShutdownAnswer`), and a moment later
    closes the connections still open. Connections already closing with no request running
    and nothing left to send (an idle TLS connection whose peer does not answer the close)
    are cut after `_IDLE_CLOSE_S`."""

    def __init__(self, config: uvicorn.Config, shutdown_grace_s: float) -> None:
        super().__init__(config)
        self.shutdown_grace_s = _check_shutdown_grace(shutdown_grace_s)
        self.hung_up = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            with super().capture_signals():
                yield
            return
        # Started with SIGINT ignored (`plume coordinator serve &` in a script: a shell without
        # job control starts its background commands so), it stays ignored, as CPython leaves
        # it: uvicorn's handler replaced the SIG_IGN, and a Ctrl-C meant for the script's
        # foreground job stopped the coordinator. uvicorn puts the SIG_IGN back when it stops.
        sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        # Started under `nohup` (or with SIGHUP ignored otherwise): a closed terminal must not
        # stop it, so SIGHUP stays ignored.
        sighup_ignored = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        if not sighup_ignored:
            previous = signal.signal(signal.SIGHUP, self._hang_up)
        try:
            with super().capture_signals():
                if sigint_ignored:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                yield
        finally:
            if not sighup_ignored:
                signal.signal(signal.SIGHUP, previous)

    def _hang_up(self, signum: int, frame: FrameType | None) -> None:
        # As SIGTERM: uvicorn raises SIGTERM again once stopped, which `serve` takes as a
        # stop asked for. Logged in `shutdown`, not in a signal handler.
        self.hung_up = True
        self.handle_exit(signal.SIGTERM, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.hung_up:
            log.info("SIGHUP: stopping gracefully, as for SIGTERM (serve does not reload)")
        ender = asyncio.ensure_future(self._end_grace())
        try:
            await super().shutdown(sockets)
        finally:
            ender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ender
        if self.force_exit and self.config.lifespan != "off":
            # A second Ctrl-C (force_exit) makes uvicorn skip the app's lifespan shutdown;
            # asyncio.run then cancelled the lifespan task, which starlette logged as an ERROR
            # traceback of a CancelledError. The app's shutdown (stop the ticker, drain the
            # round closes, whose threads the interpreter waits for anyway) runs here instead.
            await self.lifespan.shutdown()

    def _connections(self) -> list[H11Protocol]:
        return [c for c in self.server_state.connections if isinstance(c, H11Protocol)]

    async def _end_grace(self) -> None:
        grace = self.shutdown_grace_s
        await asyncio.sleep(min(grace, _IDLE_CLOSE_S))
        for conn in self._connections():
            if conn.transport.is_closing() and not _answering(conn) and not _buffered_out(conn):
                conn.transport.abort()  # closing with nothing left to send (an idle TLS one)
        if grace > _IDLE_CLOSE_S:
            await asyncio.sleep(grace - _IDLE_CLOSE_S)
        tasks = [t for t in self.server_state.tasks if not t.done()]
        # Answers going out: started by a request still running, or handed over whole by one
        # that finished and still in the connection's write buffer (a slow download).
        sending = [c for c in self._connections() if _sending(c) or _buffered_out(c)]
        running = len(tasks) - sum(1 for c in sending if _answering(c))
        if tasks or sending:
            log.warning(
                "the %g s shutdown grace is over: %d request%s still running %s answered 503 "
                "shutting_down, %d answer%s still going out cut (--shutdown-grace)",
                grace,
                running,
                "" if running == 1 else "s",
                "is" if running == 1 else "are",
                len(sending),
                "" if len(sending) == 1 else "s",
            )
        for conn in sending:
            # A request task whose answer started finishes once uvicorn sees the connection
            # lost (its send returns); it is not cancelled (the answer cannot be replaced).
            conn.transport.abort()
        if tasks:
            await asyncio.sleep(0.1)
            for task in tasks:
                if not task.done():
                    task.cancel(msg=_SHUTDOWN_CANCEL)
            await asyncio.sleep(_AFTER_GRACE_S)  # the 503s go out
        for conn in self._connections():
            if not _answering(conn):
                conn.transport.abort()  # still closing (a TLS peer that does not answer)


# The message a request task is cancelled with at the end of the grace (the app's 503 is
# keyed on the cancellation itself; this names it in a debugger or a log).
_SHUTDOWN_CANCEL = "plume: the shutdown grace is over"


def _answering(conn: H11Protocol) -> bool:
    """Whether a request runs on the connection (its answer not complete)."""
    cycle = conn.cycle
    return cycle is not None and not cycle.response_complete and not cycle.disconnected


def _buffered_out(conn: H11Protocol) -> bool:
    """Whether the connection still holds bytes to send (an answer handed over whole)."""
    return conn.transport.get_write_buffer_size() > 0


def _sending(conn: H11Protocol) -> bool:
    """Whether the connection's answer has started and is not complete."""
    return _answering(conn) and conn.cycle is not None and conn.cycle.response_started


def serve(
    config: ServiceConfig,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_key_password: str | Callable[[], str] | None = None,
    log_level: str = "info",
    access_log: bool = True,
    head_timeout_s: float = HEAD_TIMEOUT_S,
    shutdown_grace_s: float = SHUTDOWN_GRACE_S,
    send_timeout_s: float = SEND_TIMEOUT_S,
) -> None:
    """Serve until interrupted (SIGINT, SIGTERM and SIGHUP shut down gracefully; after SIGTERM
    or SIGHUP this returns normally, with the database closed). A stop waits
    `shutdown_grace_s` seconds for the requests in flight; those still running then are
    answered 503 `shutting_down` (`_Server`).

    The listening sockets are bound and the TLS files loaded first: an address that cannot be
    listened on (a port in use) raises `ListenError` (a `SystemExit`) naming it, and TLS files
    that do not load `ssl.SSLError` (or `OSError` for a file that cannot be read), before the
    database is opened (so a new `--db` is not
    created, nor an existing one restored, by a coordinator that cannot serve). Then the store
    is opened (exclusively: a second coordinator on the same database is refused) and the
    tasks restored before uvicorn starts, so a database that cannot be used raises
    `StoreError` here (a sentence, not a lifespan traceback).

    `tls_key_password` is the passphrase of an encrypted `tls_key`, or what returns it: a
    callable is called at most once, and only if the key is encrypted (the CLI asks the
    terminal there); what it raises, `serve` raises, before the database is opened. The same
    passphrase goes to uvicorn, so it is not asked again. None: OpenSSL asks the terminal
    itself, as uvicorn then would a second time.

    Whether it stops or fails to start (a port in use, TLS files that do not load, a restore
    that fails), the store is closed before this returns or raises: its `<db>.lock` is
    released, so a later serve in the same process is not refused as another coordinator.

    `log_level` is uvicorn's and, unless the process already handles `plume.coordinator`'s
    records (a handler on it or on an ancestor, e.g. the root's), the coordinator's own: while
    it serves, its lines go to stderr at that level, formatted as uvicorn's (`WARNING:  ...`).
    `access_log=False` turns off uvicorn's line per request (stdout). `head_timeout_s` and
    `send_timeout_s`: see `uvicorn_config` (checked before anything is opened, as
    `shutdown_grace_s` is).

    SIGHUP (a closed terminal, `systemctl reload`, `kill -HUP`) killed the process at once,
    before it closed the database (s25/ops finding 6): it is a graceful stop now, as SIGTERM,
    unless the process started with SIGHUP ignored (`nohup`), which keeps it ignored. A
    process started with SIGINT ignored (`serve &` in a script) keeps it ignored too.
    Nothing is reloaded (the TLS files included: a renewed certificate needs a restart).
    """
    _check_head_timeout(head_timeout_s)
    _check_send_timeout(send_timeout_s)
    _check_shutdown_grace(shutdown_grace_s)
    previous: dict[int, Any] = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN:
                continue  # `nohup plume coordinator serve &`: SIGHUP stays ignored
            previous[signum] = signal.signal(signum, _raise_terminated)
    except ValueError:  # not the main thread: leave the signals as they are
        pass
    unlog = _log_coordinator(log_level)
    try:
        passphrase: str | None = None
        if tls_cert is not None:
            # As uvicorn will load them (an SSLError here rather than after the store opened).
            passphrase = _load_tls(tls_cert, tls_key, tls_key_password)
        sockets = _listen(host, port)
        try:
            db = Path(config.db_path).expanduser().resolve()
            if not db.exists():
                # A relative --db is relative to where serve starts: one started in another
                # folder gets a new, empty database (no tasks), which is worth a line.
                log.info("creating a new database at %s", db)
            store = Store(config.db_path, exclusive=True)
            try:
                if (note := others_may_read(db)) is not None:  # left as it is: said
                    log.warning(note)
                app = create_app(config, store=store)
                coordinator = app.state.coordinator
                coordinator.restore()
                loaded, refused = len(coordinator.runtimes), len(coordinator.refused)
                log.info(
                    "plume %s (database schema %d) serving the database %s: %d task%s loaded, "
                    "%d refused",
                    plume_version(),
                    SCHEMA_VERSION,
                    db,
                    loaded,
                    "" if loaded == 1 else "s",
                    refused,
                )
                server = _Server(
                    uvicorn_config(
                        app,
                        host,
                        port,
                        tls_cert=tls_cert,
                        tls_key=tls_key,
                        tls_key_password=passphrase,
                        log_level=log_level,
                        access_log=access_log,
                        head_timeout_s=head_timeout_s,
                        shutdown_grace_s=shutdown_grace_s,
                        send_timeout_s=send_timeout_s,
                    ),
                    shutdown_grace_s,
                )
                _log_listening(sockets, tls_cert is not None)
                # uvicorn runs the lifespan shutdown (which waits for closes in flight) before
                # it returns or exits, so nothing uses the store after this.
                server.run(sockets=sockets)
            finally:
                store.close()
        finally:
            for sock in sockets:
                sock.close()
    except _Terminated:  # a stop asked for: the database was closed on the way out
        return
    finally:
        unlog()
        for caught, handler in previous.items():
            signal.signal(caught, handler)


def _load_tls(cert: str, key: str | None, password: str | Callable[[], str] | None) -> str | None:
    """Load `cert` and `key` as uvicorn will; the passphrase that decrypted the key (asked of
    `password` only when the key is encrypted), or None for a key that is not encrypted."""
    used: list[str] = []

    def ask() -> str:
        value = password() if callable(password) else password
        assert value is not None
        used.append(value)
        return value

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key, password=None if password is None else ask)
    return used[0] if used else None


def _log_coordinator(log_level: str) -> Callable[[], None]:
    """Show `plume.coordinator`'s records on stderr at `log_level`, in uvicorn's format, unless
    something already handles them; returns what undoes it. Without a handler, its INFO
    lines (a round opened, frames pruned) were never shown, and its warnings and errors went
    through Python's last-resort handler: bare, and whatever the level."""
    from uvicorn.config import LOG_LEVELS
    from uvicorn.logging import DefaultFormatter

    logger = logging.getLogger("plume.coordinator")
    if logger.hasHandlers():
        return lambda: None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(LOG_LEVELS[log_level])

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return undo


class ListenError(SystemExit):
    """`serve` cannot listen on an address: `host`/`port` name the address that failed (one of
    several `host` resolves to), `errno` the bind's error number (None when the name does not
    resolve). A `SystemExit`, as uvicorn's own exit on a bind failure was."""

    def __init__(self, host: str, port: int, errno: int | None, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host, self.port, self.errno = host, port, errno


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to the addresses `host` resolves to, with uvicorn's options (SO_REUSEADDR;
    IPv6 sockets IPv6-only); uvicorn listens on them. An address family this machine cannot
    open is skipped, as asyncio's `create_server` skips it; `ListenError` when an address
    cannot be bound, or none can be opened."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise ListenError(host, port, None, str(exc)) from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # e.g. IPv6 compiled in but not available here
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                raise ListenError(str(addr[0]), port, exc.errno, exc.strerror or str(exc)) from None
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    if not bound:
        raise ListenError(host, port, None, "no address of it can be opened on this machine")
    return bound


def _log_listening(sockets: list[socket.socket], tls: bool) -> None:
    """uvicorn logs where it listens only when it binds itself: say it for the sockets given
    (the port chosen for `--port 0` included)."""
    logger = logging.getLogger("uvicorn.error")
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
        scheme = "https" if tls else "http"
        logger.info("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", scheme, shown, port)


class _Terminated(BaseException):
    """SIGTERM (or SIGHUP), raised in the main thread while `serve` runs. uvicorn stops gracefully on
    SIGTERM and then raises the signal again for the handler it found; with Python's default
    one, the process died there, before `serve` closed the database: the lock went with the
    process, but the last commits stayed in the `-wal` file, so the `.db` file alone (a copy of
    a stopped coordinator's database) lacked them. A BaseException, so no `except Exception` of
    the service takes it for a failure of its own."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


class ServerThread:
    """A coordinator on a background thread, e.g. `with ServerThread(cfg) as url: ...`.

    Port 0 picks a free port; `url` is known once `start()` returns. `stop()` waits
    `shutdown_grace_s` for requests in flight, as `serve` does on SIGTERM. Without `app`, the store
    `create_app` opened at `config.db_path` is closed once the server has stopped (`stop`, or a
    start-up that failed); a given `app`'s store is its owner's to close.
    """

    def __init__(
        self,
        config: ServiceConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        app: Any = None,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        shutdown_grace_s: float = SHUTDOWN_GRACE_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        _check_head_timeout(head_timeout_s)
        _check_send_timeout(send_timeout_s)
        _check_shutdown_grace(shutdown_grace_s)
        self._owns_store = app is None
        self.app = app if app is not None else create_app(config)
        self.tls = tls_cert is not None
        self.server: uvicorn.Server = _Server(
            uvicorn_config(
                self.app,
                host,
                port,
                tls_cert=tls_cert,
                tls_key=tls_key,
                head_timeout_s=head_timeout_s,
                shutdown_grace_s=shutdown_grace_s,
                send_timeout_s=send_timeout_s,
            ),
            shutdown_grace_s,
        )
        self.host = host
        self._thread = threading.Thread(
            target=self.server.run, name="plume-coordinator", daemon=True
        )
        self.url = ""

    def start(self, timeout: float = 20.0) -> str:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                self._close_store()
                raise RuntimeError("coordinator thread exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("coordinator did not start in time")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://{self.host}:{port}"
        return self.url

    def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        if self._thread.ident is None:  # never started (a Ctrl-C before `start` ran)
            self._close_store()
            return
        self._thread.join(timeout)
        if not self._thread.is_alive():  # else still serving: its store stays open
            self._close_store()

    def _close_store(self) -> None:
        if self._owns_store:
            self._owns_store = False  # once: a second stop() is a no-op
            self.app.state.store.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
