"""A byte-counting TCP relay for loopback tests, and an HTTP/1.1 splitter for what it recorded.

`ByteRelay` accepts connections on 127.0.0.1, opens one upstream connection for each, copies
bytes both ways and keeps every byte it copied, per connection and direction. `exchanges`
splits a connection's two byte streams into request/response pairs with its own framing rules
(Content-Length, chunked, 1xx interim responses), written here independently of the
`protocol.messages` formula the coordinator and the SDK share, so that a test can hold the
bandwidth ledger against what really crossed the socket.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

__all__ = [
    "ByteRelay",
    "Connection",
    "Exchange",
    "HttpMessage",
    "WireParseError",
    "exchanges",
    "final_response",
]


class WireParseError(ValueError):
    """The recorded bytes are not a well-formed sequence of HTTP/1.1 messages."""


@dataclass
class Connection:
    """One relayed TCP connection: bytes client->upstream (`up`) and upstream->client (`down`)."""

    up: bytearray = field(default_factory=bytearray)
    down: bytearray = field(default_factory=bytearray)
    open_pumps: int = 2
    cut_at: int | None = None  # stream offset (up) where the relay drops the connection


class ByteRelay:
    """`with ByteRelay(upstream_url) as url:` relays `url` to the upstream `http://host:port`."""

    def __init__(self, upstream_url: str) -> None:
        host, _, port = upstream_url.removeprefix("http://").rstrip("/").rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._conns: list[Connection] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._cut: tuple[bytes, int] | None = None
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> str:
        accept = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        accept.start()
        self._threads.append(accept)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            sockets = [self._listener, *self._sockets]
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected (the listener) or already closed by the peer
            s.close()
        for t in list(self._threads):
            t.join(5)

    def cut_once(self, prefix: bytes, body_keep: int) -> None:
        """Fault: the next request that starts with `prefix` reaches the upstream with its head
        and `body_keep` bytes of its body, then the relay closes both sides of its connection
        (a link dropped mid-upload)."""
        with self._lock:
            self._cut = (prefix, body_keep)

    def connections(self) -> list[tuple[bytes, bytes]]:
        """A snapshot: (bytes up, bytes down) of every connection so far, in accept order."""
        with self._lock:
            return [(bytes(c.up), bytes(c.down)) for c in self._conns]

    def idle(self) -> bool:
        """True when every relayed connection is closed on both sides."""
        with self._lock:
            return all(c.open_pumps == 0 for c in self._conns)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed by stop()
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            conn = Connection()
            with self._lock:
                if self._stopping:
                    client.close()
                    upstream.close()
                    return
                self._conns.append(conn)
                self._sockets += [client, upstream]
                pumps = [
                    threading.Thread(target=self._pump, args=(client, upstream, conn, True)),
                    threading.Thread(target=self._pump, args=(upstream, client, conn, False)),
                ]
                self._threads += pumps
            for t in pumps:
                t.daemon = True
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn: Connection, up: bool) -> None:
        record = conn.up if up else conn.down
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if up:
                        self._arm_cut(conn, data)
                    n = len(data)
                    if conn.cut_at is not None:
                        n = max(0, min(n, conn.cut_at - len(record)))
                    record += data[:n]  # only what reaches the other side is on its wire
                    cut = conn.cut_at is not None and len(record) >= conn.cut_at
                if n:
                    dst.sendall(data[:n])
                if cut:
                    for s in (src, dst):
                        s.shutdown(socket.SHUT_RDWR)
                    break
        except OSError:
            pass  # a reset or stop(): the copy ends here; what was copied is recorded
        try:
            dst.shutdown(socket.SHUT_WR)  # pass the half-close on
        except OSError:
            pass
        with self._lock:
            conn.open_pumps -= 1

    def _arm_cut(self, conn: Connection, data: bytes) -> None:
        """Under the lock: place the armed cut once this read completes the request's head."""
        if self._cut is None or conn.cut_at is not None:
            return
        prefix, body_keep = self._cut
        stream = bytes(conn.up) + data
        start = stream.find(prefix)
        head_end = stream.find(b"\r\n\r\n", start) if start >= 0 else -1
        if head_end >= 0:
            conn.cut_at = head_end + 4 + body_keep
            self._cut = None


@dataclass(frozen=True)
class HttpMessage:
    """One HTTP/1.1 message as it was on the wire. `start`: request or status line (no CRLF);
    `headers`: lower-cased names; `size`: every byte of it (head, framing, body); `head`: the
    bytes of the start line and headers with the blank line; `body`: the de-framed body, so
    `size - head - len(body)` is the chunked framing."""

    start: str
    headers: tuple[tuple[str, str], ...]
    size: int
    body: bytes
    head: int = 0

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def status(self) -> int:
        return int(self.start.split(" ")[1])


@dataclass(frozen=True)
class Exchange:
    """A request and its final response; `interim`: the 1xx responses before it. The last
    request of a connection has `response` None if the connection ended before an answer; if
    it ended inside the request, `request` holds only its size and start line (and `response`
    is the refusal the server sent before closing, if any)."""

    request: HttpMessage
    response: HttpMessage | None
    interim: tuple[HttpMessage, ...]

    @property
    def up(self) -> int:
        return self.request.size

    @property
    def down(self) -> int:
        return (self.response.size if self.response else 0) + sum(m.size for m in self.interim)


def _head(data: bytes, pos: int) -> tuple[str, tuple[tuple[str, str], ...], int]:
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        raise WireParseError(f"no end of head after byte {pos}")
    lines = data[pos:end].decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise WireParseError(f"header line without a colon: {line!r}")
        headers.append((name.strip().lower(), value.strip()))
    return lines[0], tuple(headers), end + 4


def _chunked(data: bytes, pos: int) -> tuple[bytes, int]:
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise WireParseError("truncated chunk size line")
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n", pos)  # no trailers are expected: the blank line
            if end != pos:
                raise WireParseError("chunked trailers are not expected here")
            return bytes(body), pos + 2
        if pos + size + 2 > len(data) or data[pos + size : pos + size + 2] != b"\r\n":
            raise WireParseError("truncated or malformed chunk")
        body += data[pos : pos + size]
        pos += size + 2


def _message(data: bytes, pos: int, *, request_method: str | None) -> tuple[HttpMessage, int]:
    start, headers, body_at = _head(data, pos)
    msg = HttpMessage(start, headers, 0, b"")
    te = (msg.header("transfer-encoding") or "").lower()
    length = msg.header("content-length")
    no_body = request_method is not None and (
        request_method == "HEAD" or msg.status in (204, 304) or msg.status < 200
    )
    if no_body:
        body, end = b"", body_at
    elif te == "chunked":
        body, end = _chunked(data, body_at)
    elif length is not None:
        end = body_at + int(length)
        if end > len(data):
            raise WireParseError(f"body of {start!r} truncated")
        body = data[body_at:end]
    elif request_method is not None:  # a response without framing runs to the close
        body, end = data[body_at:], len(data)
    else:
        body, end = b"", body_at
    return HttpMessage(start, headers, end - pos, body, body_at - pos), end


def final_response(down: bytes, method: str) -> HttpMessage:
    """The first final (non-1xx) response in `down`; `WireParseError` while it is incomplete."""
    pos = 0
    while True:
        response, pos = _message(down, pos, request_method=method)
        if response.status >= 200:
            return response


def exchanges(up: bytes, down: bytes) -> list[Exchange]:
    """Split one connection's recorded bytes into exchanges; every byte must belong to one."""
    out: list[Exchange] = []
    pu = pd = 0
    while pu < len(up):
        try:
            request, pu = _message(up, pu, request_method=None)
        except WireParseError:
            # The connection ended inside this request: lost with it (no response), or
            # refused before its body came and closed (one last response)
            line, crlf, _ = up[pu:].partition(b"\r\n")
            start = line.decode("latin-1") if crlf else ""
            partial = HttpMessage(start, (), len(up) - pu, b"", 0)
            if pd == len(down):
                out.append(Exchange(partial, None, ()))
                return out
            response, pd = _message(down, pd, request_method=start.split(" ")[0])
            if pd != len(down):
                raise
            out.append(Exchange(partial, response, ()))
            return out
        method = request.start.split(" ")[0]
        interim = []
        if pd >= len(down) and pu == len(up):
            out.append(Exchange(request, None, ()))  # the connection closed before an answer
            return out
        while True:
            if pd >= len(down):
                raise WireParseError(f"no response to {request.start!r}")
            response, pd = _message(down, pd, request_method=method)
            if response.status >= 200:
                break
            interim.append(response)
        out.append(Exchange(request, response, tuple(interim)))
    if pd != len(down):
        raise WireParseError(f"{len(down) - pd} response bytes follow the last response")
    return out
