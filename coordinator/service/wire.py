"""ASGI middleware: body caps and a body deadline while streaming, and HTTP wire bytes into the
bandwidth ledger.

Handlers attach an `Attribution` (device, round, payload and dense bytes) to the request state
once a request has authenticated. When the response is complete this middleware computes the
request's and the response's HTTP/1.1 wire bytes with `protocol.messages` rules (the same the
SDK uses; a request's head is counted as it arrived when the server says its size, as
`server.CountingH11Protocol` does, whitespace a client padded it with included), adds them to the ledger and the Prometheus counters, and tells the client which round
it counted the exchange under in the `x-plume-ledger-round` response header. Two things uvicorn
writes without the app are counted too: the `100 Continue` interim response to a request that
sent `Expect: 100-continue` (once the app reads its body), and the `connection: close` header
of a response to a request that did not keep the connection alive. A HEAD response's body,
which uvicorn does not send, is not counted. An unhandled error in the app is answered here, as
a JSON 500 `internal_error` that closes the connection, and counted like any other answer (the
traceback goes to the log, not to the client). An answer the server drops because it has seen
the client close the connection (uvicorn's `send` then writes nothing) is not counted, nor the
parts of a streamed one sent after the close (`client_gone`, asked as an answer starts and as
each part of a streamed one goes out).
tests/coordinator/test_ledger_wire_audit.py holds all of it against the bytes a TCP relay
copied.

An answer that starts before the app has read the request's body to its end (a 415, 401 or 413
decided from the headers, a refusal while the body streams) gets `connection: close`, so that
uvicorn closes the connection once it is sent instead of reading the rest of the body (all of a
declared length, or a chunked body without end, until the head timeout). A request with both
`Content-Length` and `Transfer-Encoding` is refused here (400 `malformed`, the connection
closed), as RFC 9112 section 6.1 asks. tests/coordinator/test_h260_early_refusal_close.py.
So is a request that carries one of the `SINGLETON_HEADERS` (Content-Type, Content-Length,
Authorization, Date, the signature headers, Idempotency-Key) more than once, naming the header:
the routes read some headers' first value and the signature headers' last
(tests/coordinator/test_s54j_repeated_headers.py).

Every request body byte taken from the server counts, whether the app read it or
`client_gone` took it as an answer started (the part of a refused body that had arrived by
then; a 400 or 413 decided here from the head takes it the same way before answering): it is
gone from the connection either way, which is kept when that was the whole body
(tests/coordinator/test_s50_ops_wire_bytes.py). The `route` label of the metrics is the
template of the route the request matches, looked up here for a request the router did not
name one for (`_route_template`; tests/coordinator/test_s50_ops_route_label.py).

A request target in absolute form (`http://host/path`), which uvicorn hands over whole as the
path, is routed as its origin form (`_origin_form`; tests/coordinator/test_s53c_absolute_form.py).

A 405's `allow` header lists the methods of every route of the path, not only those of the
first one Starlette's router found (`_allow_every_method`; test_s54f_allow_header.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from protocol.messages import expects_continue, request_wire_bytes, response_wire_bytes
from protocol.names import Direction, Header, Reason

from .metrics import Metrics
from .store import Store

__all__ = ["Attribution", "WireMiddleware", "HEAD_BYTES", "LEDGER_HEADER", "STATE_KEY"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("plume.coordinator")

LEDGER_HEADER = b"x-plume-ledger-round"
STATE_KEY = "plume_attribution"
# The scope extension where server.CountingH11Protocol puts a request head's size as it arrived
# (`{"bytes": n}`): counted instead of the head rebuilt from the parsed headers, which lacks the
# optional whitespace a client may put around header values.
HEAD_BYTES = "plume.head_bytes"
# What uvicorn writes on its own (httptools and h11 alike): the interim response it sends on the
# app's first body read when the request carried `Expect: 100-continue`, and the header it adds
# when the connection will close and the app's response did not say so.
_CONTINUE = len(b"HTTP/1.1 100 Continue\r\n\r\n")
_CLOSE_HEADER = len(b"connection: close\r\n")
# Routes that stream large binary bodies and enforce their own, per-task cap, by method: only
# the method whose handler applies that cap is exempt from the JSON cap. A GET of a secure stage
# (the download) or of a task's model (the export) shares its path with an upload, but takes no
# body: one sent with it is held to the JSON cap like any other request's.
_STREAMING: dict[str, re.Pattern[str]] = {
    "POST": re.compile(r"^/v1/(rounds/[^/]+/updates|secure/rounds/[^/]+/stages/[^/]+)$"),
    "PUT": re.compile(r"^/v1/admin/tasks/[^/]+/model$"),
}


def _streams(scope: Scope) -> bool:
    """Whether the request is one of the streamed uploads, which cap their own body."""
    pattern = _STREAMING.get(scope["method"])
    return pattern is not None and pattern.match(scope["path"]) is not None


@dataclass
class Attribution:
    device_id: str
    round_id: int
    payload_up: int = 0
    dense_up: int = 0
    payload_down: int = 0
    dense_down: int = 0
    # Called when none of the answer went out (the client had closed first): the exchange is
    # counted nowhere, and what the route counted for it is given back.
    on_dropped: Callable[[], None] | None = None


class _BodyTooLarge(HTTPException):
    """A body read past the cap. An HTTPException because FastAPI's body parser re-raises
    those, while it turns any other error into 400 "There was an error parsing the body"."""

    def __init__(self, cap: int) -> None:
        detail = f"request body above the {cap}-byte cap"
        super().__init__(413, detail, headers={"connection": "close"})


class _BodyTimeout(HTTPException):
    """A body that did not arrive completely within the deadline (a slow or stalled sender)."""

    def __init__(self, seconds: float) -> None:
        detail = f"request body not complete within {seconds:g} s"
        super().__init__(408, detail, headers={"connection": "close"})


# The largest body part handed to the server at once (see `counting_send`).
SEND_PART = 128 * 1024


class WireMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        store: Store,
        metrics: Metrics,
        json_cap: int,
        member: Callable[[int, str, int | None, int | None], bool] | None = None,
        body_timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.metrics = metrics
        self.json_cap = json_cap
        # A request's whole body must arrive within this many seconds of its first read: a
        # sender that trickles bytes cannot hold a connection open indefinitely.
        self.body_timeout_s = body_timeout_s
        # member(round_id, device_id, task_id, url_round): may the exchange count in the round
        # (the device was selected for it, it is open or just closed, it is the round of the
        # URL and of the URL's task)? Anyone can sign any round id, so only a round's own
        # devices may add bytes to its ledger, and only while it runs.
        self.member = member

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        raw = scope.get("raw_path")
        if raw and (origin := _origin_form(raw)) is not None:
            # An absolute-form target (`GET http://host/path HTTP/1.1`), which RFC 9112
            # section 3.2.2 says a server MUST accept: uvicorn hands it over whole as the
            # path, and every such request was a 404. Routed (and signed) as its origin
            # form; its wire bytes count the target as sent (`_account`).
            scope[_SENT_TARGET] = raw
            scope["raw_path"] = raw = origin
            scope["path"] = origin.decode("latin-1")
        if raw and b"%" in raw:
            # Routed as written: Starlette matches the percent-decoded path, so `/%6detrics`
            # answered as `/metrics` and `/v1/rounds/%31/updates` as round 1's upload route
            # (helper-330's F4). No route's path has an escape: such a path is a 404, and an
            # id written with one is a 422 naming it as sent (`StoreId`).
            scope["path"] = raw.split(b"?", 1)[0].decode("latin-1")
        cap = None if _streams(scope) else self.json_cap
        # Whether the request has a body (a chunked one, or a Content-Length above 0): an
        # answer that starts before the app has read it to its end closes the connection.
        has_body = any(
            (k == b"content-length" and v.strip() not in (b"", b"0")) or k == b"transfer-encoding"
            for k, v in scope["headers"]
        )
        # Body bytes taken from the server, by the app's reads or by `client_gone`: each was
        # read off the connection, so each counts (before stop 50, those `client_gone` took
        # were not, though the connection was kept and they were gone from it). `delivered`:
        # those handed to the app, which the cap is about.
        received = 0
        delivered = 0
        sent_body = 0
        offered = 0  # response body bytes the app sent, `sent_body` those that went out
        interim = 0  # bytes of a `100 Continue` uvicorn sent before the response
        continues = expects_continue(
            scope.get("http_version", "1.1"), (v for k, v in scope["headers"] if k == b"expect")
        )
        started: dict[str, Any] = {}
        body_done = False
        deadline: float | None = None
        reads = 0  # the app's calls of `receive`
        # Request messages `client_gone` took from the server, handed to the app's next reads.
        taken: list[Message] = []
        gone = False  # the server saw the client close the connection: it drops what is sent
        streaming = False  # the answer's body comes in more than one part
        dropped = False  # ... and it had, when the answer started: nothing of it went out

        async def client_gone() -> bool:
            """Whether the server has seen the client close the connection: then it drops
            what the app sends (uvicorn's `send` returns without writing). Asked as the answer
            starts and as each part of a streamed answer goes out, from `receive`, which hands over an `http.disconnect` at
            once when the connection is closed and otherwise waits (the read is cancelled).
            Not asked before the app's first read of a request that expects `100 Continue`:
            that read makes uvicorn send it."""
            nonlocal gone, received
            if gone or (continues and reads == 0):
                return gone
            # As a task: it runs to its first wait while this one yields once, which also
            # lets a close the loop has just read reach the server before the answer does.
            peek = asyncio.ensure_future(receive())
            await asyncio.sleep(0)
            if not peek.done():
                peek.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await peek
                return False
            message = peek.result()
            if message["type"] == "http.disconnect":
                gone = True
            elif message["type"] == "http.request":
                taken.append(message)  # part of the body the app has not read yet
                received += len(message.get("body", b""))  # off the connection all the same
            return gone

        async def counting_receive() -> Message:
            nonlocal received, delivered, body_done, deadline, interim, reads
            reads += 1
            if continues and not started:
                interim = _CONTINUE  # uvicorn answers the first read before any response
            if taken:
                message = taken.pop(0)  # counted in `received` when `client_gone` took it
            else:
                if body_done or self.body_timeout_s is None:
                    message = await receive()  # after the body: only disconnects arrive here
                else:
                    if deadline is None:
                        deadline = time.monotonic() + self.body_timeout_s
                    try:
                        message = await asyncio.wait_for(receive(), deadline - time.monotonic())
                    except TimeoutError:
                        raise _BodyTimeout(self.body_timeout_s) from None
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
            if message["type"] == "http.request":
                delivered += len(message.get("body", b""))
                if cap is not None and delivered > cap:
                    raise _BodyTooLarge(cap)
                body_done = not message.get("more_body", False)
            return message

        async def counting_send(message: Message) -> None:
            nonlocal sent_body, dropped, streaming, offered
            if message["type"] == "http.response.start":
                dropped = await client_gone()
                att: Attribution | None = scope["state"].get(STATE_KEY)
                if att is not None and att.round_id > 0 and not self._member(scope, att):
                    att.round_id = 0  # counted as control traffic instead
                headers = _with_date(message.get("headers", []))
                if message["status"] == 405:
                    headers = _allow_every_method(scope, headers)
                if att is not None and att.round_id > 0:
                    headers.append((LEDGER_HEADER, str(att.round_id).encode()))
                early = has_body and not body_done and not _ends_body(taken)
                if early or message["status"] == 413:
                    # Answered before the body has arrived (a 415, 401 or 413 from the headers,
                    # a refusal while streaming): uvicorn would go on reading the rest of it
                    # after the answer, all of a declared length or a chunked body without end,
                    # until the head timeout. Closing after the answer ends that. A 413 closes
                    # even when its body had all arrived, as the middleware's own always did
                    # (http-api.md): before, a route's (an upload's, a secure stage's, an
                    # initial model's) kept the connection then (test_s54f_413_closes.py).
                    if b"close" not in _tokens(headers, b"connection"):
                        headers.append((b"connection", b"close"))
                message["headers"] = headers
                started["status"] = message["status"]
                started["headers"] = headers
            elif message["type"] == "http.response.body" and scope["method"] != "HEAD":
                body = message.get("body", b"")
                if len(body) > SEND_PART:
                    # In parts, each written once the one before has drained (uvicorn waits
                    # while the transport is paused): an unread answer holds about one part of
                    # this process's memory, and the send timeout sees the client's progress
                    # (server.CountingH11Protocol). Whole, it sat in the transport's buffer.
                    more = bool(message.get("more_body", False))
                    view = memoryview(body)
                    for at in range(0, len(body), SEND_PART):
                        part = bytes(view[at : at + SEND_PART])
                        last = at + SEND_PART >= len(body)
                        await counting_send(
                            {
                                "type": "http.response.body",
                                "body": part,
                                "more_body": more or not last,
                            }
                        )
                    return
                # A part sent after the close is dropped. An answer in one body part (every
                # JSON answer, and a model or delta chain of at most `SEND_PART` bytes) was
                # asked about at its start, in the same loop turn or one before: asked again
                # only while streaming, which saves a loop turn per answer. A larger answer is
                # streamed (the parts above), so a download cut off midway counts the parts
                # handed over before the close, not the whole body (before stop 46: whole).
                single = not streaming and not message.get("more_body", False)
                streaming = streaming or bool(message.get("more_body", False))
                offered += len(body)
                if single or not await client_gone():
                    sent_body += len(body)  # uvicorn drops a HEAD's body
            await send(message)

        refusal = _refused_before_app(scope, cap)
        if refusal is not None:
            # Decided from the head alone, before the app runs. What the server already holds
            # of the body is taken (`client_gone`) and counted, as for an early answer of the
            # app's; an answer the server drops (the client is gone) is counted nowhere.
            dropped = await client_gone()
            sent = await _reject(send, *refusal)
            if dropped:
                log.info(
                    "client closed the connection before the answer to %s %s",
                    scope["method"],
                    scope["path"],
                )
            else:
                self._account_reject(scope, received, 0, sent)
            return
        try:
            await self.app(scope, counting_receive, counting_send)
        except _BodyTooLarge:
            if started:
                raise
            sent = await _reject_413(send, cap or 0)
            self._account_reject(scope, received, interim, sent)
            return
        except _BodyTimeout as exc:
            if started:
                raise
            sent = await _reject(send, 408, Reason.REQUEST_TIMEOUT, str(exc.detail))
            self._account_reject(scope, received, interim, sent)
            return
        except ClientDisconnect:
            # A phone losing its link mid-upload is routine, not a server error: uvicorn
            # logged a traceback for each. Nothing was stored (the body never arrived whole),
            # nobody is left to answer, and the request is counted nowhere (operations.md,
            # "What the ledger counts"); the device retries on a new connection.
            log.info("client disconnected during %s %s", scope["method"], scope["path"])
            return
        except Exception as exc:
            if started:
                # The answer is (partly) out and cannot be replaced: uvicorn logs the
                # traceback and closes the connection. What the app sent is counted.
                if not dropped:
                    _trim_cut(scope, offered - sent_body)
                    self._account(scope, received, started, sent_body + interim)
                raise
            # Starlette's own 500 would go out from outside this middleware, counted nowhere,
            # as text/plain. Answered here instead: JSON, by the same rules as any other
            # answer (in the round of a round's device, else control traffic).
            incident = secrets.token_hex(4)
            log.error(
                "unhandled error on %s %s (incident %s)",
                scope["method"],
                scope["path"],
                incident,
                exc_info=exc,
            )
            att = scope["state"].get(STATE_KEY)
            if att is not None:  # the answer carries no model or stage message
                att.payload_down = att.dense_down = 0
            detail = (
                f"the coordinator failed on this request (incident {incident} in its log); "
                "retry later"
            )
            await _reject(counting_send, 500, Reason.INTERNAL_ERROR, detail)
        if started and dropped:
            # Nothing of the answer went out: counted nowhere, as a request whose body was
            # cut off (operations.md, "What the ledger counts"); the device retries.
            att = scope["state"].get(STATE_KEY)
            if att is not None and att.on_dropped is not None:
                att.on_dropped()
            log.info(
                "client closed the connection before the answer to %s %s",
                scope["method"],
                scope["path"],
            )
        elif started:
            _trim_cut(scope, offered - sent_body)
            self._account(scope, received, started, sent_body + interim)

    def _member(self, scope: Scope, att: Attribution) -> bool:
        """Whether the round may count the exchange. A failed check (a store error) counts it
        as control traffic with a log line: raised as the response starts, it would cut it."""
        if self.member is None:
            return True
        params = scope.get("path_params") or {}
        try:
            return self.member(
                att.round_id,
                att.device_id,
                _url_id(params.get("task_id")),
                _url_id(params.get("round_id")),
            )
        except Exception:
            log.exception(
                "round %d membership check failed; its exchange is counted as control traffic",
                att.round_id,
            )
            return False

    def _account_reject(
        self, scope: Scope, received: int, interim: int, sent: tuple[Message, int]
    ) -> None:
        """A request this middleware refused (400, 413, 408) is control traffic: its head, the
        body bytes taken from the server before the refusal, and the refusal."""
        scope["state"].pop(STATE_KEY, None)
        start, body = sent
        self._account(scope, received, dict(start), body + interim)

    def _account(
        self, scope: Scope, received: int, started: dict[str, Any], sent_body: int
    ) -> None:
        """`sent_body`: response body bytes plus any interim response sent before it."""
        target = scope.get(_SENT_TARGET) or scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target = target + b"?" + scope["query_string"]
        raw_head = (scope.get("extensions") or {}).get(HEAD_BYTES)
        if isinstance(raw_head, dict) and isinstance(raw_head.get("bytes"), int):
            up = raw_head["bytes"] + received
        else:  # another server: the head as `protocol.messages` writes it
            up = request_wire_bytes(
                scope["method"], target.decode("latin-1"), scope["headers"], received
            )
        down = response_wire_bytes(started["status"], started["headers"], sent_body)
        down += _server_added_bytes(scope, started["headers"])
        route_name = _route_template(scope)
        self.metrics.requests.labels(route_name, str(started["status"])).inc()
        att: Attribution | None = scope["state"].get(STATE_KEY)
        if att is None or att.round_id <= 0:
            self.metrics.control_wire_bytes.labels(Direction.UP).inc(up)
            self.metrics.control_wire_bytes.labels(Direction.DOWN).inc(down)
            by_route = self.metrics.control_wire_bytes_by_route
            by_route.labels(route_name, Direction.UP).inc(up)
            by_route.labels(route_name, Direction.DOWN).inc(down)
            return
        # After the response went out (its wire bytes are known only now): a process killed
        # before this commit loses the exchange's rows, while what the exchange did (an
        # accepted upload) was committed before its answer (docs/operations.md, "What the
        # ledger counts").
        self.store.ledger_add(
            [
                (att.round_id, att.device_id, Direction.UP, att.payload_up, up, att.dense_up),
                (
                    att.round_id,
                    att.device_id,
                    Direction.DOWN,
                    att.payload_down,
                    down,
                    att.dense_down,
                ),
            ]
        )
        for direction, payload, wire, dense in (
            (Direction.UP, att.payload_up, up, att.dense_up),
            (Direction.DOWN, att.payload_down, down, att.dense_down),
        ):
            self.metrics.bytes.labels(direction, "payload").inc(payload)
            self.metrics.bytes.labels(direction, "wire").inc(wire)
            self.metrics.bytes.labels(direction, "dense").inc(dense)


UNMATCHED = "unmatched"

# Where the middleware keeps an absolute-form request target's path as sent (`_origin_form`).
_SENT_TARGET = "plume.sent_target"
_ABSOLUTE = re.compile(rb"^[Hh][Tt][Tt][Pp][Ss]?://([^/]*)(.*)$", re.DOTALL)


def _origin_form(raw: bytes) -> bytes | None:
    """The origin form (path) of an absolute-form request target's path part,
    `http://host:port/a/b` -> `/a/b` (`http://host` -> `/`, RFC 9112 section 3.2.2), or None
    when `raw` is not one (the query was split off by the server)."""
    found = _ABSOLUTE.match(raw)
    if found is None:
        return None
    path = found.group(2)
    return path if path.startswith(b"/") else b"/" + path


def _route_template(scope: Scope) -> str:
    """The `route` label of a request: the template of the route its method and path match
    (`/v1/rounds/{round_id}/updates`), never the path itself, so the label's values are the
    app's routes and `unmatched`. The router names the route it ran in the scope, but only
    for the app's own routes (FastAPI leaves it out for its `/openapi.json`, `/docs`,
    `/docs/oauth2-redirect` and `/redoc`), and not at all when the request was answered
    before routing (this middleware's 400 and 413 from the head): then the app's routes are
    matched as the router matches them, a route for the path with another method (a 405)
    when none has the method. `unmatched`: no route has the path (a 404)."""
    route = scope.get("route")
    if route is None:
        route = _match_route(scope)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def _match_route(scope: Scope) -> Any:
    """The app's route for `scope` by Starlette's rule (the first full match, else the first
    with the path and not the method), or None; Starlette sets `scope["app"]`."""
    router = getattr(scope.get("app"), "router", None)
    partial = None
    for route in getattr(router, "routes", ()):
        try:
            match, _ = route.matches(scope)
        except Exception:  # a route that cannot match this scope matches nothing
            continue
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


def _allow_every_method(
    scope: Scope, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """A 405's headers with `allow` listing the methods of every route of the path (RFC 9110
    section 15.5.6: "the target resource's currently supported methods"). Starlette's router
    lists those of the first route with the path only, so `DELETE /v1/admin/tasks` was told
    `allow: POST`, leaving out its GET (helper-54f; likewise the model's GET and PUT, and a
    secure stage's GET and POST). Unchanged when no route of the app has the path."""
    router = getattr(scope.get("app"), "router", None)
    methods: set[str] = set()
    for route in getattr(router, "routes", ()):
        try:
            match, _ = route.matches(scope)
        except Exception:  # a route that cannot match this scope matches nothing
            continue
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    if not methods:
        return headers
    out = [(k, v) for k, v in headers if bytes(k).lower() != b"allow"]
    out.append((b"allow", ", ".join(sorted(methods)).encode()))
    return out


def _trim_cut(scope: Scope, unsent: int) -> None:
    """An answer cut off midway (`unsent` body bytes never went out) counts as payload only
    the part of its body that went out, and as dense bytes the same share of the dense model
    it stood for (rounded down): the device got no model, and the round's compression ratio
    is not changed by a cut (before, payload and dense counted in full, the wire bytes not)."""
    att: Attribution | None = scope["state"].get(STATE_KEY)
    if unsent <= 0 or att is None or att.payload_down <= 0:
        return
    kept = max(0, att.payload_down - unsent)
    att.dense_down = att.dense_down * kept // att.payload_down
    att.payload_down = kept


def _url_id(value: Any) -> int | None:
    """A task or round id the router matched in the URL path (None: the route names none).
    One that is not a decimal id names no round (-1): the route refused it anyway."""
    if value is None:
        return None
    text = str(value)
    return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else -1


def _with_date(headers: Any) -> list[tuple[bytes, bytes]]:
    """`headers` with a `date` (RFC 9110 IMF-fixdate, this server's clock) unless the app set
    one. Uvicorn's own is off (its bytes would be sent behind the ledger's back): added here,
    it is counted like any other header, and devices read a round's deadline against it."""
    out = list(headers)
    if not any(bytes(k).lower() == b"date" for k, _ in out):
        out.append((b"date", formatdate(usegmt=True).encode()))
    return out


_TWICE = (
    "a request with both Content-Length and Transfer-Encoding is refused (RFC 9112 section "
    "6.1): send one of them"
)


# Request headers that hold one value, which the coordinator reads (or, for `date`, which HTTP
# defines so): a request carrying one of them more than once is refused before the app runs.
# The routes read such a header in two ways, Starlette's `headers.get` (the first value: the
# media type, the declared length, the admin token) and a dict of all of them (the last value:
# the signature headers), so a request with two could be checked by one value and acted on by
# the other (auditor's finding, s54j).
SINGLETON_HEADERS: tuple[str, ...] = (
    Header.CONTENT_TYPE,
    Header.CONTENT_LENGTH,
    Header.AUTHORIZATION,
    "date",
    Header.DEVICE,
    Header.TIMESTAMP,
    Header.NONCE,
    Header.ROUND,
    Header.SIGNATURE,
    Header.IDEMPOTENCY_KEY,
)
_SINGLETONS = frozenset(name.encode() for name in SINGLETON_HEADERS)


def _repeated_singleton(headers: Any) -> tuple[str, int] | None:
    """The first of `SINGLETON_HEADERS` the request carries more than once, with its count."""
    counts: dict[bytes, int] = {}
    for k, _ in headers:
        name = bytes(k).lower()
        if name in _SINGLETONS:
            counts[name] = counts.get(name, 0) + 1
    for name, n in counts.items():
        if n > 1:
            return name.decode(), n
    return None


def _refused_before_app(scope: Scope, cap: int | None) -> tuple[int, Reason, str] | None:
    """The refusal a request gets from its head alone, before the app runs (status, reason,
    detail), or None."""
    if _framed_twice(scope["headers"]):
        # RFC 9112 §6.1: a front proxy that frames by Content-Length and this server (h11
        # frames by the chunked encoding) would read two different requests from the same
        # bytes (request smuggling). Refused, and the connection closed after the answer.
        return 400, Reason.MALFORMED, _TWICE
    if (repeated := _repeated_singleton(scope["headers"])) is not None:
        # Before the app, so nothing is read, checked or stored: no nonce is spent, and the
        # request can be sent again with the header once (test_s54j_repeated_headers.py).
        name, n = repeated
        return (
            400,
            Reason.MALFORMED,
            f"the {name} header is given {n} times; a request carries it once",
        )
    if cap is not None:
        for k, v in scope["headers"]:
            if k == b"content-length" and declares_above(v, cap):
                return 413, Reason.TOO_LARGE, _too_large(cap)
    return None


def declares_above(value: str | bytes | None, cap: int) -> bool:
    """Whether a `Content-Length` value of ASCII decimal digits declares more than `cap` bytes
    (`declared_length`; none, or not such digits: False, and the body's own size is then held
    to the cap as it streams)."""
    length = declared_length(value, cap)
    return length is not None and length > cap


def declared_length(value: str | bytes | None, cap: int) -> int | None:
    """A `Content-Length` value's length in bytes, for comparing with `cap`: None when there is
    none or it is not ASCII decimal digits. A value with more digits than `cap` (leading zeros
    aside) comes back as `cap + 1`, however many digits it has; any other value comes back as
    itself, so a value above `cap` is above it either way. Told by its length first: Python's
    `int` refuses (ValueError) more than 4,300 digits, and `str.isdigit` takes digits such as
    "²" that `int` refuses too. h11 passes neither on, but another server, or the app run
    through ASGI, may, and such a request was a text/plain 500 instead of the 413 every other
    oversized declaration gets (helper s61b)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.isascii():
            return None
        value = value.encode("ascii")
    if not value.isdigit():  # bytes.isdigit: ASCII digits only; False when empty
        return None
    digits = value.lstrip(b"0")
    if len(digits) > len(str(cap)):
        return cap + 1
    return int(digits or b"0")


def _too_large(cap: int) -> str:
    return f"request body above the {cap}-byte cap"


def _framed_twice(headers: Any) -> bool:
    """Whether a request carries both `Content-Length` and `Transfer-Encoding`."""
    names = {bytes(k).lower() for k, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


def _ends_body(taken: list[Message]) -> bool:
    """Whether the request messages `client_gone` took from the server hold the body's end
    (the whole body arrived, though the app did not read it)."""
    return any(m["type"] == "http.request" and not m.get("more_body", False) for m in taken)


def _tokens(headers: Any, name: bytes) -> set[bytes]:
    return {
        t.strip().lower() for k, v in headers if k.lower() == name for t in bytes(v).split(b",")
    }


def _server_added_bytes(scope: Scope, response_headers: Any) -> int:
    """The `connection: close` header uvicorn adds to a response on a connection that will not
    be kept alive (an HTTP/1.0 request, or `Connection: close`) when the app did not send one."""
    keep_alive = scope.get("http_version") != "1.0" and b"close" not in _tokens(
        scope["headers"], b"connection"
    )
    if keep_alive or b"close" in _tokens(response_headers, b"connection"):
        return 0
    return _CLOSE_HEADER


async def _reject_413(send: Send, cap: int) -> tuple[Message, int]:
    return await _reject(send, 413, Reason.TOO_LARGE, _too_large(cap))


async def _reject(send: Send, status: int, reason: Reason, detail: str) -> tuple[Message, int]:
    """A JSON error response that closes the connection (the rest of the body is not read);
    returns its start message and body size, for the control-traffic counter."""
    # Compact, as every other answer's JSON is (Starlette's JSONResponse): before, these bodies
    # alone had a space after each ':' and ',' (test_s54h_compact_refusals.py).
    body = json.dumps(
        {"reason": str(reason), "detail": detail}, ensure_ascii=False, separators=(",", ":")
    ).encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": _with_date(
            [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
        ),
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
    return start, len(body)
