"""The coordinator's FastAPI app: device, admin, ledger, metrics and health endpoints.

Every route is listed with its errors in docs/http-api.md. Device routes authenticate with the
Ed25519 request signature (protocol.auth); admin routes with `Authorization: Bearer <token>`.
A route with a body checks its Content-Type (415) before authentication and before the body is
decoded; registration is rate-limited per client address when configured (429).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import difflib
import functools
import json
import logging
import math
import os
import re
import sqlite3
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.utils import create_model_field
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field, TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException

from compression import (
    CodecConfig,
    CodecError,
    DecodeLimits,
    ModelSpec,
    UpdateCodec,
    encode_snapshot,
    model_digest,
)
from protocol import auth as pauth
from protocol.messages import (
    BandwidthReport,
    CheckInRequest,
    CheckInResponse,
    ErrorBody,
    MessageError,
    RegisterRequest,
    RegisterResponse,
    RoundStatus,
    TaskConfig,
    TaskCreated,
    TaskStatus,
    UploadReceipt,
    apply_delta,
    check_awaiting_round,
    check_max_model_bytes,
    check_task_id,
    check_train_loss,
    from_json,
)
from protocol.names import ContentType, ModelEncoding, Path, Reason, SnapshotDType, TaskState
from protocol.names import Header as H
from protocol.names import Query as Q

from . import rounds
from ._ratelimit import EveryFew
from ._secure_api import add_secure_routes
from .auth import (
    DEFAULT_PACE_S,
    BodyBudget,
    RateLimiter,
    RequestVerifier,
    check_admin_token,
    client_key,
    registered_key,
)
from .dp_total import AllTasksPrivacyCache
from .errors import (
    ApiError,
    QueryBefore,
    QueryNumber,
    QueryVersion,
    StoreId,
    require_media_type,
)
from .metrics import Metrics
from .rounds import Coordinator, ServiceConfig
from .store import DamagedRow, Store
from .wire import STATE_KEY, Attribution, WireMiddleware, declares_above

__all__ = ["create_app"]

log = logging.getLogger("plume.coordinator")

# `last` on a task's round list: a page of 1 to MAX_ROUNDS_PAGE rounds (see `QueryVersion`).
_QueryPage = Annotated[Annotated[int, Field(ge=1, le=rounds.MAX_ROUNDS_PAGE)] | None, QueryNumber]


@dataclass(slots=True)
class TaskCreatedWarned(TaskCreated):
    """`POST /v1/admin/tasks`'s answer: `TaskCreated` (`task_id`, `state`) and `warnings`, what
    the task was created with but warned about (`rounds.creation_warnings`; empty for most),
    so that the operator who creates it sees what the coordinator logs."""

    warnings: list[str] = field(default_factory=list)


_IDEMPOTENCY = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "malformed request"),
        (401, "unsigned, unregistered, stale, replayed or badly signed request"),
        (403, "authenticated but not allowed (not selected, round mismatch, wrong admin token)"),
        (404, "unknown task or round"),
        (
            409,
            "conflict: round closed, duplicate upload, wrong task or stage state, or a stored "
            "task this coordinator refuses or the operator stopped (`task_refused`)",
        ),
        (413, "body above the size cap"),
        (415, "Content-Type is not the route's (application/json or application/octet-stream)"),
        (422, "body or parameters fail validation (bad frame, bad JSON)"),
        (503, "the coordinator's database failed (locked, full, read-only, I/O); retry"),
    )
}
# Retry-After of a 503 `store_unavailable` (seconds): a lock or a full disk clears, or not,
# on the operator's time scale, not the device's.
_STORE_RETRY_S = 5
# ... and of one caused by a damaged database, which only the operator's restore clears.
_DAMAGED_RETRY_S = 60
_RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "too many registrations from this address; retry after `Retry-After` s",
    }
}


def _target(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    qs = request.scope.get("query_string") or b""
    return (raw + (b"?" + qs if qs else b"")).decode("latin-1")


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


async def _capped_body(request: Request, cap: int) -> bytes:
    """The request's body, read no further than `cap` bytes: 413 `too_large` (closing the
    connection, the rest unread) for a declared `Content-Length` above it, before a byte is
    read, or at the first chunk past it. The signed-request check reads a body with this, before
    it checks a signature: the JSON cap of the wire middleware holds such a body already, and
    this holds it again whatever the middleware exempts. A body the route's own parser read
    first (a check-in's JSON) is the one Starlette kept."""
    too_large = ApiError(
        413, Reason.TOO_LARGE, f"request body above the {cap}-byte cap", {"connection": "close"}
    )
    if declares_above(request.headers.get(H.CONTENT_LENGTH), cap):
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # Starlette's kept body, if the route read it
        size += len(chunk)
        if size > cap:
            raise too_large
        parts.append(chunk)
    body = b"".join(parts)
    request._body = body  # as `request.body()` keeps it: a later read gets it again
    return body


def _unknown_keys(cls: Any, raw: Any, where: str = "") -> list[str]:
    """The keys of the JSON object `raw` that are not fields of the dataclass `cls`, and those
    of the objects in its dataclass fields (`codec.bitz`, `spec[0].shap`), each with the
    closest field when one is close ("aggregater (did you mean aggregator?)"). A dict field
    (`secure`) is its own parser's to check."""
    if not isinstance(raw, dict) or not dataclasses.is_dataclass(cls):
        return []
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = []
    for key in raw:
        if key not in names:
            shown = f"{where}{str(key)[:40]!r}" if not str(key).isidentifier() else where + key
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            out.append(shown + (f" (did you mean {where}{close[0]}?)" if close else ""))
    for name in names:
        value = raw.get(name)
        kinds = typing.get_args(hints[name]) or (hints[name],)
        if typing.get_origin(hints[name]) is list and isinstance(value, list):
            for i, item in enumerate(value):
                out += _unknown_keys(kinds[0], item, f"{where}{name}[{i}].")
        else:
            for kind in kinds:
                if dataclasses.is_dataclass(kind):
                    out += _unknown_keys(kind, value, f"{where}{name}.")
    return out


def _json_invalid(error: Mapping[str, Any], doc: Any) -> str:
    """The detail of a body that is not valid JSON: the parser's message and where, as line,
    column and character offset. FastAPI's own, "body.12: JSON decode error", gave the offset
    as if it were a field (test_s54h_json_decode_detail.py)."""
    loc = error.get("loc", ())
    pos = loc[-1] if loc and isinstance(loc[-1], int) else None
    msg = str((error.get("ctx") or {}).get("error", "JSON decode error"))
    if pos is None or not isinstance(doc, str):
        return f"body: not valid JSON: {msg}"
    where = json.JSONDecodeError(msg, doc, pos)
    return (
        f"body: not valid JSON: {msg} at line {where.lineno}, column {where.colno} "
        f"(character {pos})"
    )


def _media(expected: ContentType) -> Callable[[Request], Awaitable[None]]:
    """A route dependency refusing (415) a body not labelled `expected`. Route dependencies run
    before parameter ones (the signature check, which spends a nonce) and before the body is
    decoded into the route's model, but after FastAPI has read and parsed a JSON route's body:
    the JSON routes check the header before that too (`_before_body`)."""

    async def check(request: Request) -> None:
        require_media_type(request.headers.get(H.CONTENT_TYPE), expected)
        if expected != ContentType.JSON:
            return
        # FastAPI has read and parsed the body by now (Starlette keeps both). Only a body with
        # a surrogate escape is walked: the search finds none in ordinary ones.
        raw = await request.body()
        if _SURROGATE_ESCAPE.search(raw):
            _refuse_lone_surrogates(await request.json())
        _refuse_repeated_keys(raw)

    return check


# A JSON escape of a UTF-16 surrogate (U+D800..U+DFFF). A pair of them is one character; one
# alone decodes to a Python str that cannot be encoded as UTF-8.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _refuse_lone_surrogates(parsed: Any) -> None:
    """422 `validation` for a JSON body with a string (key or value) holding an unpaired
    surrogate escape (`"\\ud800"`): not Unicode text (RFC 8259, 8.2). Python's parser takes
    it, and such a string in a task's name or spec was stored, then failed every later answer
    that wrote it out (500s on the task listing and on check-ins; helper-330's F1)."""
    stack: list[Any] = [parsed]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ApiError(
                    422,
                    Reason.VALIDATION,
                    "a JSON string holds an unpaired UTF-16 surrogate escape (such as "
                    "\\ud800 without its low half): JSON text must be Unicode (RFC 8259, 8.2)",
                ) from None
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as `_refuse_repeated_keys` parses it: its (key, value) pairs in the order
    sent, a repeated key kept (a dict keeps its last value only)."""


# A key written after a `.` in the path a refusal names; any other is written `["..."]`.
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# The longest key or path a refusal writes out whole (a key may be 64 KiB long).
_SHOWN_KEY_CHARS = 80


def _refuse_repeated_keys(raw: bytes) -> None:
    """422 `validation` for a JSON body in which one object gives a key more than once, at any
    depth (`{"task_id": 1, "task_id": 2}`, or a task config's `{"training": {"lr": 0.1, "lr":
    9}}`); the detail names the key, the object's path and how many times. RFC 8259 (4) leaves
    such an object's meaning to the parser: Python's, and so every route's model, took the last
    value silently, another parser may take the first, so a device's signed body, or a config
    an operator checked with another tool, could be read as something else than meant. Parsed
    again here (FastAPI's parse has already dropped the repeats): a JSON body is 64 KiB at
    most. A body that does not parse is left to FastAPI's own refusal."""
    try:
        parsed = json.loads(raw, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return
    stack: list[tuple[Any, str]] = [(parsed, "$")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, _Pairs):
            seen: set[str] = set()
            for key, item in value:
                if key in seen:
                    times = sum(1 for k, _ in value if k == key)
                    raise ApiError(
                        422,
                        Reason.VALIDATION,
                        f"body: the key {_shown_key(key)} is given {times} times in one JSON "
                        f"object ({_cut_key(where)}); give each key once: parsers differ on "
                        "which value a repeated key means",
                    )
                seen.add(key)
                step = f".{key}" if _PLAIN_KEY.fullmatch(key) else f"[{_shown_key(key)}]"
                stack.append((item, _child(where, step)))
        elif isinstance(value, list):
            stack.extend((item, _child(where, f"[{i}]")) for i, item in enumerate(value))


def _shown_key(key: str) -> str:
    """`key` as a refusal writes it: a JSON string (escapes kept), cut after 80 characters."""
    return _cut_key(json.dumps(key[: _SHOWN_KEY_CHARS + 1]))


def _cut_key(text: str) -> str:
    return text if len(text) <= _SHOWN_KEY_CHARS else text[:_SHOWN_KEY_CHARS] + "..."


def _child(where: str, step: str) -> str:
    """The path `where` + `step` (`$.training`, `$["a b"]`, `$.spec[0]`), cut after 80
    characters and not grown once cut: every value waiting to be walked holds its path, so a
    path as long as a 32 KB key, copied into each of the thousands of values under it, would
    take hundreds of megabytes."""
    return where if where.endswith("...") else _cut_key(where + step)


def _idempotency_key(headers: dict[str, str]) -> None:
    """400 `malformed` for an upload without a valid `Idempotency-Key`: checked with the
    signature headers, before the body is read and the nonce spent (a request refused after
    could not be sent again with the header added: its nonce was used)."""
    key = headers.get(H.IDEMPOTENCY_KEY)
    if key is None or not _IDEMPOTENCY.fullmatch(key):
        raise ApiError(400, Reason.MALFORMED, "Idempotency-Key header (1-128 chars) required")


def _upload_loss(request: Request) -> float | None:
    """An upload's training loss, `?train_loss=` (`check_train_loss`), or None without one;
    422 `validation` naming it for a malformed value, another query key, or the key given
    twice. Checked with the signature headers, before the body is read and the nonce spent,
    as the `Idempotency-Key` is (the query is part of the signed target, so a proxy cannot
    add, change or drop it without the signature failing)."""
    _only_query(request, Q.TRAIN_LOSS)
    text = request.query_params.get(Q.TRAIN_LOSS)
    if text is None:
        return None
    try:
        return check_train_loss(text)
    except MessageError as exc:
        raise ApiError(422, Reason.VALIDATION, str(exc)) from None


def _only_query(request: Request, *allowed: str) -> None:
    """422 `validation` (naming the key) for a query key the route does not take, and for one
    given more than once. Else a mistyped key (`?hav=3`, `?lats=2`) would be ignored and the
    route answer as without it (a full snapshot, every round), and `?have=0&have=1` would
    answer for the last value alone, silently. Called first in the route's body: after its
    authentication, as FastAPI's own check of a query value (`?have=x`) runs."""
    params = request.query_params
    for key in params:
        if key not in allowed:
            shown = key if len(key) <= 64 else key[:64] + "..."
            names = ", ".join(allowed[:-1]) + " and " + allowed[-1] if allowed[1:] else allowed[0]
            raise ApiError(
                422,
                Reason.VALIDATION,
                f"query.{shown}: unknown parameter; this route takes {names}",
            )
        times = len(params.getlist(key))
        if times > 1:
            raise ApiError(
                422, Reason.VALIDATION, f"query.{key}: given {times} times; give it once"
            )


# The readiness route (not in protocol.names.Path: devices do not call it).
READYZ = "/readyz"
# At most one store error log line per this many seconds (`EveryFew`).
_STORE_LOG_EVERY_S = 5.0


# /readyz answers within about this many seconds (a load balancer's or Kubernetes' probe
# gives up after one by default): a check still running then (waiting on the store's
# connection, which a write of this coordinator holds) is answered 503.
_READY_WAIT_S = 1.0
# The readiness check's own connection waits at most this long for the database's write lock
# (this coordinator's writes take milliseconds; another process's, a sqlite3 shell or a
# VACUUM, can hold it for ever) ...
_READY_LOCK_WAIT_S = 0.5
# ... and takes it at most once in this many seconds (its answer serves the calls between).
_READY_EVERY_S = 1.0


def _write_lock_error(path: str, wait_s: float) -> str | None:
    """None when a connection of its own takes the database's write lock within `wait_s`
    seconds (`BEGIN IMMEDIATE`, then `ROLLBACK`: nothing is written), else why not. Not
    through the store's connection: waiting on the lock there holds the store's own lock,
    which every request's nonce write, and the event loop with it, would wait on."""
    if path in ("", ":memory:"):
        return None  # a database nothing else can open
    uri = f"file:{quote(os.fsencode(os.path.realpath(path)))}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=wait_s, isolation_level=None)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return (
                f"{exc}: another connection held the database's write lock for more than "
                f"{wait_s:g} s (another process writing to it, such as a sqlite3 shell, a "
                "VACUUM or a tool; or a long write of this coordinator)"
            )
        return str(exc)
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()
    return None


class _Readiness:
    """/readyz's check: whether the database's write lock can be taken (`_write_lock_error`,
    at most once every _READY_EVERY_S), then, while the store's writes fail, the store's own
    probe write (`Store.probe_write`). On a thread of its own, one check at a time, waited
    for at most _READY_WAIT_S: before, the probe ran while another process held the lock and
    held the store's lock for the 5 s busy timeout, and /healthz, which read the journal mode
    under that lock, waited with it (helper-275: one /healthz + /readyz pair took 9.8 s)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="plume-readyz")
        self._running: asyncio.Future[str | None] | None = None
        self._checked = -math.inf  # monotonic time of the last lock check
        self._lock_error: str | None = None

    def _check(self) -> str | None:
        try:
            if time.monotonic() - self._checked >= _READY_EVERY_S:
                self._lock_error = _write_lock_error(self.store.path, _READY_LOCK_WAIT_S)
                self._checked = time.monotonic()
            if self._lock_error is not None:
                return self._lock_error
            if self.store.write_failing is None:
                return None
            return self.store.probe_write()
        except Exception as exc:  # a damaged file's DatabaseError: not ready, and why
            return f"the readiness check failed: {exc}"

    async def error(self) -> str | None:
        """None when ready, else why not."""
        if (
            self._running is None
            and self._lock_error is None
            and self.store.write_failing is None
            and time.monotonic() - self._checked < _READY_EVERY_S
        ):
            return None  # checked within the second, nothing failing since
        if self._running is None:
            running = asyncio.get_running_loop().run_in_executor(self._pool, self._check)
            running.add_done_callback(self._finished)
            self._running = running
        try:
            return await asyncio.wait_for(asyncio.shield(self._running), _READY_WAIT_S)
        except TimeoutError:
            return (
                f"the readiness check did not finish within {_READY_WAIT_S:g} s: the "
                "coordinator's database connection is busy (a write waiting on the "
                "database's lock, or a long write)"
            )

    def _finished(self, running: asyncio.Future[str | None]) -> None:
        if self._running is running:
            self._running = None

    def close(self) -> None:
        self._pool.shutdown(wait=False)


# The Retry-After (seconds: a restart takes a few) of the 503 `shutting_down`
# (`Reason.SHUTTING_DOWN`) a request still running at the end of a stop's grace is answered
# with (server.py `_Server`).
_SHUTDOWN_RETRY_S = 5


class _ShutdownAnswer:
    """ASGI middleware, inside the wire middleware (which counts what it sends): a request
    whose task is cancelled before its answer started, as the server cancels the requests
    still running at the end of a stop's grace (server.py `_Server`), is answered 503
    `shutting_down` with `Retry-After` and `connection: close`, with an INFO line. Before,
    uvicorn answered it with its plain-text 500 and an ERROR traceback (s25/ops finding 1). A
    stop is not a failure of the request: the device sends it again, to the next coordinator
    (an upload with the same Idempotency-Key is accepted once). The answer is control
    traffic, not the round's. A request whose answer had started cannot be answered again:
    the cancellation goes on (the server closes its connection)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if started or task is None or not task.cancelling():
                raise
            task.uncancel()  # answered here: the task ends normally
            log.info(
                "%s %s was still running at the end of the shutdown grace: answered 503 %s",
                scope["method"],
                scope["path"],
                Reason.SHUTTING_DOWN,
            )
            scope.setdefault("state", {}).pop(STATE_KEY, None)  # control traffic
            response = JSONResponse(
                {
                    "reason": str(Reason.SHUTTING_DOWN),
                    "detail": "the coordinator is stopping (a restart or a deploy) and this "
                    "request was still running at the end of its shutdown grace; send it "
                    f"again in {_SHUTDOWN_RETRY_S} s",
                },
                status_code=503,
                headers={H.RETRY_AFTER: str(_SHUTDOWN_RETRY_S), "connection": "close"},
            )
            await response(scope, receive, watched_send)


@functools.cache
def _error_field(status: int | str) -> Any:
    """The response field of an `ErrorBody` answer with `status` (the OpenAPI schema of an
    error response), built once per process: the same on every route and every app."""
    return create_model_field(
        name=f"Response_{status}_error", type_=ErrorBody, mode="serialization"
    )


# A check of a request decided from its headers alone (`_before_body`): raises `ApiError`.
_HeadCheck = Callable[[Request], None]
_Endpoint = typing.TypeVar("_Endpoint", bound=Callable[..., Any])
_BEFORE_BODY = "_plume_before_body"


def _before_body(*checks: _HeadCheck) -> Callable[[_Endpoint], _Endpoint]:
    """Mark a route's endpoint (below its `@app.post`) with `checks` that `_Route` runs, in
    order, before FastAPI reads the body for the route's model. FastAPI reads and parses a
    `body:` parameter before it runs the route's dependencies, so a JSON route's refusals
    decided from the headers (415, 401) waited for the whole body: a client that sent
    `Expect: 100-continue` got `100 Continue`, then, if it sent nothing, a 408 at the body
    timeout instead of the 415 (s44 review). The dependencies still run after (the same
    checks pass again) and the OpenAPI document is unchanged."""

    def mark(endpoint: _Endpoint) -> _Endpoint:
        endpoint.__dict__[_BEFORE_BODY] = checks
        return endpoint

    return mark


class _Route(APIRoute):
    """A route whose `ErrorBody` responses (`_ERRORS` and the like: nine or more a route) share
    one response field per status code (`_error_field`) instead of one each. FastAPI builds a
    pydantic TypeAdapter per route and response model: ~170 of ErrorBody an app, half of
    `create_app`'s time (0.22 s, now 0.11 s), paid again by every coordinator start (a restart,
    each test's server). The OpenAPI document is the same (tests/coordinator/
    test_h307_route_fields.py). It also runs the header checks its endpoint is marked with
    (`_before_body`) before the body is read."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # Before APIRoute's own __init__, which builds the handler (`get_route_handler`).
        self.before_body: tuple[_HeadCheck, ...] = getattr(endpoint, _BEFORE_BODY, ())
        responses: dict[int | str, dict[str, Any]] = kwargs.pop("responses", None) or {}
        errors = [code for code, r in responses.items() if r.get("model") is ErrorBody]
        without = {
            code: {k: v for k, v in r.items() if k != "model"} if code in errors else r
            for code, r in responses.items()
        }
        super().__init__(path, endpoint, responses=without, **kwargs)
        self.responses = responses  # as given: the OpenAPI document drops "model" itself
        for code in errors:
            self.response_fields[code] = _error_field(code)

    def get_route_handler(self) -> Callable[[Request], typing.Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        checks = self.before_body
        if not checks:
            return handler

        async def checked(request: Request) -> Response:
            # A refusal raised here is rendered by the app's exception handlers, as one
            # raised by a dependency; the body is not read (the wire middleware closes the
            # connection after the answer).
            for check in checks:
                check(request)
            return await handler(request)

        return checked


def create_app(
    config: ServiceConfig,
    *,
    store: Store | None = None,
    rate_clock: Callable[[], float] | None = None,
) -> FastAPI:
    """Build the ASGI app. The store opens at `config.db_path` unless one is given.

    `rate_clock` (monotonic seconds, default `time.monotonic`) drives the registration rate
    limit; tests inject one to step time without sleeping.
    """
    metrics = Metrics()
    the_store = store if store is not None else Store(config.db_path)
    # One older-version rebuild at a time: each decodes up to MAX_EXPORT_CHAIN frames in the
    # default executor, which round closes share.
    rebuild_lock = asyncio.Lock()
    coordinator = Coordinator(the_store, config, metrics)
    # The epsilon of a device in every DP-accounted task (report only; docs/privacy.md, 7).
    all_tasks_dp = AllTasksPrivacyCache(
        coordinator.runtimes, lambda: [*coordinator.refused, *coordinator.unloaded]
    )
    metrics.dp_all_tasks.source = all_tasks_dp.get
    metrics.store_errors.source = lambda: the_store.write_errors
    # A body's reservation is kept while it arrives at the pace that ends it within the body
    # timeout (`BodyBudget`).
    budget = BodyBudget(config.upload_buffer_bytes, pace_s=config.body_timeout_s or DEFAULT_PACE_S)
    verifier = RequestVerifier(the_store, config.signature_window_s, budget)
    metrics.upload_buffer.budget = budget
    # Read once: /healthz does not touch the store (its lock can be held for seconds, by a
    # write waiting on another process's lock); the store sets WAL when it opens.
    journal_mode = the_store.journal_mode
    readiness = _Readiness(the_store)
    register_limit = RateLimiter(
        config.register_rate_per_s, config.register_burst, clock=rate_clock or time.monotonic
    )
    json_body = Depends(_media(ContentType.JSON))
    check_in_json = TypeAdapter(CheckInResponse)
    binary_body = Depends(_media(ContentType.OCTET_STREAM))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not coordinator.restored:  # `serve` restores before uvicorn starts (clear errors)
            coordinator.restore()
        for rt in coordinator.pending_closes():
            coordinator.schedule_close(rt)
        ticker = asyncio.create_task(_tick_loop())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await coordinator.drain()
            readiness.close()

    async def _tick_loop() -> None:
        n = 0
        while True:
            await asyncio.sleep(config.tick_s)
            try:
                for rt in coordinator.tick():
                    coordinator.schedule_close(rt)
                n += 1
                if n % 1200 == 0:
                    verifier.prune()
            except Exception:  # the ticker must survive one bad tick; the error is logged
                log.exception("coordinator tick failed")

    app = FastAPI(
        title="Plume coordinator",
        version="1",
        summary="Federated learning rounds for phones, where the network is the scarce resource.",
        lifespan=lifespan,
        # A known path plus "/" is an unknown path: a JSON 404, not a bodyless 307 to follow.
        redirect_slashes=False,
    )
    app.router.route_class = _Route
    app.state.coordinator = coordinator
    app.state.store = the_store
    app.state.verifier = verifier
    app.state.metrics = metrics
    # One store error line per request flooded the log (often on the full disk itself) at a
    # fleet's check-in rate: at most one every _STORE_LOG_EVERY_S, with the count left out.
    store_log = app.state.store_error_log = EveryFew(_STORE_LOG_EVERY_S)
    damaged_log = EveryFew(_STORE_LOG_EVERY_S)

    # -- error rendering ---------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status in (401, 403) and exc.reason != Reason.NOT_SELECTED:
            metrics.auth_failures.labels(str(exc.reason)).inc()
        return JSONResponse(
            {"reason": str(exc.reason), "detail": exc.detail},
            status_code=exc.status,
            headers=exc.headers,
        )

    def _unavailable(detail: str, retry_s: int) -> JSONResponse:
        return JSONResponse(
            {"reason": str(Reason.STORE_UNAVAILABLE), "detail": detail},
            status_code=503,
            headers={H.RETRY_AFTER: str(retry_s)},
        )

    @app.exception_handler(sqlite3.OperationalError)
    async def _store_error(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        # The database failing to do its work (a lock held too long, a full disk, a file
        # turned read-only, an I/O error) is the service being unavailable, not a bug: 503
        # with a sentence and one log line. Constraint errors are bugs and stay a 500.
        if (skipped := store_log()) is not None:
            log.error(
                "store error on %s %s: %s%s",
                request.method,
                request.url.path,
                exc,
                store_log.since(skipped),
            )
        return _unavailable(
            f"the coordinator's database failed ({exc}); retry later", _STORE_RETRY_S
        )

    @app.exception_handler(sqlite3.DatabaseError)
    async def _store_damaged(request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
        # SQLite raises the bare DatabaseError for a damaged file ("database disk image is
        # malformed", "file is not a database"): found while running, as the start-time check
        # finds it (store.py). Its subclasses other than OperationalError (IntegrityError,
        # ProgrammingError, ...) are bugs in this code: re-raised, a 500 with its traceback.
        if type(exc) is not sqlite3.DatabaseError:
            raise exc
        if (skipped := damaged_log()) is not None:
            log.error(
                "the database %s is damaged (%s, on %s %s): stop the coordinator and restore "
                "a backup (docs/operations.md, 'Persistence and recovery')%s",
                the_store.path,
                exc,
                request.method,
                request.url.path,
                damaged_log.since(skipped),
            )
        return _unavailable(
            f"the coordinator's database is damaged ({exc}); retry later", _DAMAGED_RETRY_S
        )

    @app.exception_handler(DamagedRow)
    async def _row_damaged(request: Request, exc: DamagedRow) -> JSONResponse:
        # A running task's stored row that no longer parses (edited while the coordinator
        # runs): not a bug of the request. A refused task's damaged round is its 409
        # `task_refused` instead (rounds.py), and at the next start this task is refused too.
        log.error(
            "the database %s holds a damaged row (%s, on %s %s): fix the row or restore a backup",
            the_store.path,
            exc,
            request.method,
            request.url.path,
        )
        return _unavailable(
            f"the coordinator's database holds a damaged row ({exc}); retry later",
            _DAMAGED_RETRY_S,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        detail = "; ".join(
            _json_invalid(e, exc.body)
            if e.get("type") == "json_invalid"
            else f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in errors[:5]
        )
        return JSONResponse({"reason": str(Reason.VALIDATION), "detail": detail}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {
            404: Reason.NOT_FOUND,
            405: Reason.METHOD_NOT_ALLOWED,
            408: Reason.REQUEST_TIMEOUT,  # a body past the deadline (wire.py)
        }.get(exc.status_code, Reason.MALFORMED)
        if exc.status_code == 413:  # a body past the cap while streaming (wire.py)
            reason = Reason.TOO_LARGE
        return JSONResponse(
            {"reason": str(reason), "detail": str(exc.detail)}, exc.status_code, exc.headers
        )

    # -- auth dependencies -----------------------------------------------------------------

    async def device(
        request: Request,
        x_plume_device: str | None = Header(None, description="device id (32 hex digits)"),
        x_plume_round: str | None = Header(None, description="round id, 0 if none"),
        x_plume_timestamp: str | None = Header(None, description="Unix time, ms"),
        x_plume_nonce: str | None = Header(None, description="fresh hex nonce"),
        x_plume_signature: str | None = Header(None, description="Ed25519, base64url"),
    ) -> pauth.SignedFields:
        """A signed request from a registered device (see docs/http-api.md, Signing)."""
        body = await _capped_body(request, config.json_body_cap)
        fields = verifier.verify(
            method=request.method, target=_target(request), headers=_headers(request), body=body
        )
        setattr(request.state, STATE_KEY, Attribution(fields.device_id, fields.round_id))
        return fields

    async def admin(
        authorization: str | None = Header(None, description="Bearer <admin token>"),
    ) -> None:
        check_admin_token(config.admin_token, authorization)

    async def device_or_admin(request: Request) -> str | None:
        """The signing device's id, or None for the admin token."""
        if H.AUTHORIZATION in request.headers:
            check_admin_token(config.admin_token, request.headers[H.AUTHORIZATION])
            return None
        fields = await device(request)
        return fields.device_id

    def registration_quota(request: Request) -> None:
        """One token of the client address's registration bucket, or 429 with Retry-After.
        Run once, before the body is read (`_before_body`), not as a dependency too: a second
        run would spend a second token."""
        wait = register_limit.admit(client_key(request.client.host if request.client else None))
        if wait:
            metrics.registrations_rate_limited.inc()
            raise ApiError(
                429,
                Reason.RATE_LIMITED,
                f"too many registrations from this address; retry in {wait} s",
                headers={H.RETRY_AFTER: str(wait)},
            )

    # -- checks decided from the headers alone (`_before_body`): run before a JSON route's
    # body is read, as the binary routes run theirs (`RequestVerifier.read_signed_body`)

    def json_media(request: Request) -> None:
        require_media_type(request.headers.get(H.CONTENT_TYPE), ContentType.JSON)

    def admin_header(request: Request) -> None:
        check_admin_token(config.admin_token, request.headers.get(H.AUTHORIZATION))

    def signature_form(request: Request) -> None:
        """401 `unsigned` (signature headers missing or malformed), from the headers alone."""
        verifier.signed_fields(_headers(request))

    def signature_headers(request: Request) -> None:
        """401 `unsigned` (signature headers missing or malformed) and 401 `unregistered`, as
        `RequestVerifier.verify` answers them once the body is read: the nonce is not spent."""
        verifier.registered_key(verifier.signed_fields(_headers(request)).device_id)

    # -- device routes ---------------------------------------------------------------------

    @app.post(
        Path.REGISTER,
        response_model=RegisterResponse,
        responses={**_ERRORS, **_RATE_LIMITED},
        tags=["device"],
        dependencies=[json_body],
    )
    # Before the body is read: the media type (the header alone) first, so a 415 spends no
    # token of the address's quota; then the quota, so a flood is refused before its body is
    # read, its signature checked or it is stored; then the signature headers' form (401
    # `unsigned`). The public key's 400s need the body, so they follow.
    @_before_body(json_media, registration_quota, signature_form)
    async def register(request: Request, body: RegisterRequest) -> RegisterResponse:
        """Register an Ed25519 public key; the request is signed with that same key."""
        key = registered_key(body.public_key)
        raw = await request.body()
        try:
            Ed25519PublicKey.from_public_bytes(key)
        except ValueError:
            raise ApiError(400, Reason.MALFORMED, "public_key is not an Ed25519 key") from None
        if pauth.small_order(key):
            # It has no secret key, and the identity point verifies a forged signature for
            # every message: anyone could act as such a device (helper-340).
            raise ApiError(
                400,
                Reason.MALFORMED,
                "public_key is a point of small order: no secret key belongs to it, so a "
                "signature under it proves nothing",
            )
        fields = verifier.verify(
            method=request.method,
            target=_target(request),
            headers=_headers(request),
            body=raw,
            presented_key=key,
        )
        created = the_store.register_device(fields.device_id, key, coordinator.clock())
        if created:
            # Counted once on start (restore); a COUNT(*) here would scan the table at every
            # registration, on the event loop.
            metrics.devices.inc()
        return RegisterResponse(fields.device_id, created, the_store.incarnation)

    @app.post(
        Path.CHECK_IN,
        response_model=CheckInResponse,
        responses=_ERRORS,
        tags=["device"],
        dependencies=[json_body],
    )
    @_before_body(json_media, signature_headers)
    async def check_in(
        request: Request,
        body: CheckInRequest,
        fields: pauth.SignedFields = Depends(device),  # noqa: B008
    ) -> Response:
        """A task assignment, or `wait` with `retry_after_s` (pace steering); with
        `awaiting_round`, also what became of the device's accepted upload in that round.
        `features` lists what the device's SDK honours: a task that needs one it does not list
        is not given to it (409 `sdk_unsupported` when named); nor is a task whose model is
        over the `max_model_bytes` it declares (409 `model_too_large` when named), nor one
        whose layout is not among the `model_layouts` it declares or whose model name is not
        among the `model_names` it declares (409 `model_layout_mismatch` when named)."""
        awaiting = task_id = cap = None
        # Strictly, from the JSON as sent: the model's lax parsing would take "7", 7.0 or true
        # for a round or task id (or a model version, checked and not used). The object
        # FastAPI parsed for `body` (Starlette keeps it): not parsed again. `features` and
        # `max_model_bytes` are read from it too, strictly (a coordinator before either
        # ignored the key, so a newer SDK works against one).
        raw = await request.json()
        try:
            if body.task_id is not None:
                task_id = check_task_id(raw.get("task_id"))
            if body.awaiting_round is not None:
                awaiting = check_awaiting_round(raw.get("awaiting_round"))
            if body.model_version is not None:
                rounds.check_model_version(raw.get("model_version"))
            features = rounds.check_features(raw.get("features"))
            if body.max_model_bytes is not None:
                cap = check_max_model_bytes(raw.get("max_model_bytes"))
        except ValueError as exc:  # MessageError; JSON the model's parser took is JSON
            raise ApiError(422, Reason.VALIDATION, str(exc)) from None
        # `model_layouts` was checked as sent by `CheckInRequest`'s own schema (a bad one: 422).
        layouts = None if body.model_layouts is None else frozenset(body.model_layouts)
        names = None if body.model_names is None else frozenset(body.model_names)
        answer = coordinator.check_in(
            fields.device_id, task_id, awaiting, features, cap, layouts, names
        )
        att: Attribution = getattr(request.state, STATE_KEY)
        if answer.assignment is not None:
            att.round_id = answer.assignment.round_id
        if answer.assignment is not None or answer.round_outcome is not None:
            # What the device acts on with what it keeps per round and task id (its records,
            # residuals, models): the database those ids are of.
            answer.incarnation = the_store.incarnation
        # Dumped as FastAPI dumps a response model (types coerced to the schema's).
        content = check_in_json.dump_python(answer, mode="json")
        for key in ("round_outcome", "incarnation"):
            if content[key] is None:
                del content[key]  # not asked or not acted on: the bytes it always was
        return JSONResponse(content)

    @app.get(
        Path.MODEL,
        response_class=Response,
        responses={
            **_ERRORS,
            200: {"content": {ContentType.OCTET_STREAM: {}}, "description": "model bytes"},
            429: {
                "model": ErrorBody,
                "description": "this device's snapshots of this version are over the "
                "snapshots_per_version limit; retry after `Retry-After` s",
            },
        },
        tags=["device"],
    )
    async def model(
        request: Request,
        task_id: StoreId,
        have: Annotated[QueryVersion, Query(description="model version the device holds")] = None,
        format: str = Query("auto", pattern="^(auto|snapshot|delta)$"),
        dtype: SnapshotDType = Query(SnapshotDType.FP32),  # noqa: B008
        fields: pauth.SignedFields = Depends(device),  # noqa: B008
    ) -> Response:
        """The current model: a delta chain from `have`, or a full snapshot (fp32/fp16+zstd)."""
        _only_query(request, "have", "format", "dtype")
        rt = coordinator.runtimes.get(task_id)
        if rt is not None and rt.released and have != rt.version:
            # A finished task's model is read back from the store: in a worker thread, for
            # the fp32 snapshot's length a chain is weighed against and for the snapshot sent
            # (`TaskRuntime.warm`; an empty chain, have= the version, needs neither).
            if have is not None:
                await asyncio.to_thread(rt.warm, SnapshotDType.FP32)
            if have is None or format == "snapshot":
                await asyncio.to_thread(rt.warm, dtype)
        elif rt is not None and have != rt.version and not rt.keeps(dtype):
            # A running task's fp32 snapshot is encoded as its version is published; its fp16
            # one at the first download asking for it (maybe sent as a snapshot even with
            # `have`: a chain too long or pruned), in a worker thread too.
            await asyncio.to_thread(rt.warm, dtype)
        answer = coordinator.plan_model(task_id, have, format, dtype, fields.device_id)
        if answer.body is None:
            # Up to max_chain (1000) frames read from SQLite: in a worker thread, not on the
            # event loop every other request waits on.
            chain = await asyncio.to_thread(coordinator.read_chain, answer)
            answer = coordinator.chain_answer(answer, chain)
        body = answer.body
        assert body is not None
        att: Attribution = getattr(request.state, STATE_KEY)
        att.payload_down = len(body)
        # The dense baseline of a model sent; an empty chain (have= the current version)
        # sends none, and repeated ones made the round's ratio to dense look better.
        att.dense_down = answer.rt.spec.dense_bytes if answer.sends_model else 0
        if answer.counted:  # given back if none of it goes out (the device closed first)
            att.on_dropped = functools.partial(coordinator.uncount_snapshot, answer)
        return Response(body, media_type=ContentType.OCTET_STREAM, headers=answer.headers)

    @app.post(
        Path.UPLOAD,
        response_model=UploadReceipt,
        responses=_ERRORS,
        tags=["device"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {ContentType.OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
            },
            "parameters": [
                {"in": "header", "name": h, "required": False, "schema": {"type": "string"}}
                for h in (
                    H.DEVICE, H.ROUND, H.TIMESTAMP, H.NONCE, H.SIGNATURE, H.IDEMPOTENCY_KEY,
                )
            ] + [
                {
                    "in": "query", "name": Q.TRAIN_LOSS, "required": False,
                    "description": "the device's mean local training loss, when its "
                    "assignment's report_loss is true: a decimal number in [0, 1e6]",
                    "schema": {"type": "string", "maxLength": 32},
                }
            ],
        },
    )  # fmt: skip
    async def upload(request: Request, round_id: StoreId) -> UploadReceipt:
        """Upload one compressed update frame; streamed under the round's size cap."""
        headers = _headers(request)
        train_loss: float | None = None

        def check_headers(headers: dict[str, str]) -> None:
            nonlocal train_loss
            _idempotency_key(headers)
            train_loss = _upload_loss(request)

        # Cheap checks first (Content-Type, signature headers, the idempotency key, the
        # query's training loss), before reading a byte of the body or spending the nonce.
        # Unknown rounds get the JSON cap: nothing legitimate is bigger than a 404 needs.
        fields, frame = await verifier.read_signed_body(
            method=request.method,
            target=_target(request),
            headers=headers,
            chunks=request.stream(),
            cap=coordinator.upload_cap_for_round(round_id) or config.json_body_cap,
            what="update",
            check_headers=check_headers,
        )
        key = headers[H.IDEMPOTENCY_KEY]
        if fields.round_id != round_id:
            # A refusal is control traffic: it carried no update into either round.
            raise ApiError(403, Reason.ROUND_MISMATCH, "signed round differs from the URL")
        att = Attribution(fields.device_id, fields.round_id, payload_up=len(frame))
        att.dense_up = coordinator.dense_bytes_for_round(round_id)
        setattr(request.state, STATE_KEY, att)
        # plume_upload_seconds: from here, after the body was read and its signature verified
        # (the link's speed would dominate the read), to the upload taken; not on a refusal.
        t0 = asyncio.get_running_loop().time()
        # Named only when sent: an upload without a loss calls submit as before the field.
        loss = {} if train_loss is None else {"train_loss": train_loss}
        receipt, to_close = coordinator.submit(round_id, fields.device_id, key, frame, **loss)
        metrics.upload_seconds.observe(asyncio.get_running_loop().time() - t0)
        if to_close is not None:
            coordinator.schedule_close(to_close)
        result: UploadReceipt = receipt
        return result

    @app.get(Path.ROUND, response_model=RoundStatus, responses=_ERRORS, tags=["device"])
    async def round_status(
        round_id: StoreId,
        caller: str | None = Depends(device_or_admin),  # noqa: B008
    ) -> RoundStatus:
        """A round's state, counts and (once committed) the version it published. A device
        reads measurements that name no other device of the round (the admin reads all)."""
        return coordinator.round_status(round_id, only=caller)

    @app.get(
        Path.BANDWIDTH,
        response_model=BandwidthReport,
        responses={**_ERRORS, 200: {"content": {"text/csv": {}}}},
        tags=["device"],
    )
    async def bandwidth(
        request: Request,
        round_id: StoreId,
        format: str = Query("json", pattern="^(json|csv)$"),
        caller: str | None = Depends(device_or_admin),  # noqa: B008
    ) -> Any:
        """The round's bandwidth ledger: per device and direction, payload/wire/dense bytes.
        The admin gets every device's rows; a device only its own, totals included (another
        device's upload size depends on its data under top-k and zstd)."""
        _only_query(request, "format")
        report = coordinator.bandwidth(round_id, only=caller)
        if format == "csv":
            lines = ["round_id,device_id,direction,payload_bytes,wire_bytes,dense_bytes,requests"]
            lines += [
                f"{r.round_id},{r.device_id},{r.direction},{r.payload_bytes},{r.wire_bytes},"
                f"{r.dense_bytes},{r.requests}"
                for r in report.rows
            ]
            return PlainTextResponse("\n".join(lines) + "\n", media_type=ContentType.CSV)
        return report

    # -- admin routes ----------------------------------------------------------------------

    @app.post(
        Path.ADMIN_TASKS,
        response_model=TaskCreatedWarned,
        status_code=201,
        responses=_ERRORS,
        tags=["admin"],
        dependencies=[json_body, Depends(admin)],
    )
    @_before_body(json_media, admin_header)
    async def create_task(request: Request, body: TaskConfig) -> TaskCreatedWarned:
        """Create a task; it waits for its initial model (PUT .../model) before running.
        `warnings`: what it was created with but warned about (a dp delta above 1/(10 N), ...).
        A key that is not a field (a misspelled `aggregater`) is refused, not ignored."""
        # The JSON as sent (the object FastAPI parsed for `body`; Starlette keeps it): the
        # model's parser drops keys it does not know, which would run the task on defaults.
        raw = await request.json()
        unknown = _unknown_keys(TaskConfig, raw)
        if unknown:
            raise ApiError(
                422,
                Reason.VALIDATION,
                f"unknown task config key{'s' if len(unknown) > 1 else ''}: "
                + ", ".join(unknown[:8])
                + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
                + " (a key the coordinator ignored would leave its setting at the default)",
            )
        try:
            # Again by the protocol's own strict parser: the model's parser coerces (`"rounds":
            # true` was a task of 1 round, `2.0`, `"2"` and `"over_selection": true` were taken),
            # where every other message refuses a value of the wrong JSON type.
            body = from_json(TaskConfig, raw, "body")
        except MessageError as exc:
            raise ApiError(422, Reason.VALIDATION, str(exc)) from None
        try:
            # In a worker thread: a secure task's check plans every round size its cohort
            # allows (seconds for a large ungrouped one), which would stall every request.
            task_id = await asyncio.to_thread(coordinator.create_task, body)
        except ValueError as exc:
            raise ApiError(422, Reason.VALIDATION, str(exc)) from None
        return TaskCreatedWarned(task_id, "awaiting_model", rounds.creation_warnings(body))

    @app.put(
        Path.ADMIN_TASK_MODEL,
        response_model=TaskStatus,
        responses=_ERRORS,
        tags=["admin"],
        dependencies=[binary_body, Depends(admin)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {ContentType.OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )  # fmt: skip
    async def put_model(request: Request, task_id: StoreId) -> TaskStatus:
        """Upload the initial model as a `compression.encode_snapshot` snapshot (fp32 or fp16)."""
        if (refusal := coordinator.refusal(task_id)) is not None:
            raise refusal
        row = the_store.task(task_id)
        if row is None:
            raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {task_id}")
        if row.state != TaskState.AWAITING_MODEL:
            # Refused before the body is read (set_initial_model checks again, under its own
            # read): a task's model is set once, and a body we will not use is not waited for.
            raise ApiError(409, Reason.INVALID_STATE, f"task {task_id} already has a model")

        spec = ModelSpec.from_json(row.config["spec"])
        cap = DecodeLimits().frame_cap(spec)
        too_large = ApiError(413, Reason.TOO_LARGE, f"snapshot above the {cap}-byte cap")
        if declares_above(request.headers.get(H.CONTENT_LENGTH), cap):
            raise too_large  # before a byte is read, as the upload routes refuse
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise too_large
            chunks.append(chunk)
        # Decoding, validating and building in a worker thread keeps the loop answering
        # (a big model, or a secure task's plan check after a restart, takes a while).
        rt = await asyncio.to_thread(coordinator.prepare_initial_model, task_id, b"".join(chunks))
        return coordinator.commit_initial_model(rt)

    @app.get(
        Path.ADMIN_TASK_MODEL,
        response_class=Response,
        responses={
            **_ERRORS,
            200: {
                "content": {ContentType.OCTET_STREAM: {}},
                "description": "the model as an fp32 snapshot",
            },
            410: {"model": ErrorBody, "description": "a published version no longer rebuilt"},
        },
        tags=["admin"],
        dependencies=[Depends(admin)],
    )
    async def export_model(
        request: Request,
        task_id: StoreId,
        version: Annotated[
            QueryVersion, Query(description="the version wanted (default: the current)")
        ] = None,
        base: Annotated[
            QueryVersion,
            Query(description="answer the delta chain from this version instead of a snapshot"),
        ] = None,
    ) -> Response:
        """The task's current model as an fp32 `encode_snapshot` snapshot (as devices get it),
        with `x-plume-model-version` and `x-plume-model-digest`; also for a done or stopped
        task. `version=N` other than the current is 404 `unknown_version` (never published),
        else version N's fp32 snapshot, rebuilt from the stored initial model and delta
        frames and checked against its digest; 410 `version_gone` (the reason in `detail`)
        for a task stored before schema 4 (no initial model kept), a frame on the way emptied
        by `--keep-frames`, N above 1,024 (ask for version 1,024, then the chain from it), or
        a stored model or frame that fails its digest. With `base=B`: the delta chain from
        version B to N (default the current), for the operator's own copy of version B; 410
        `version_gone` once a frame on the way was emptied by `--keep-frames`."""
        _only_query(request, "version", "base")
        rt = coordinator.runtimes.get(task_id)
        if rt is not None and rt.released and base is None and version in (None, rt.version):
            # A finished task's model is read back from the store: in a worker thread
            # (`TaskRuntime.warm`), not on the event loop.
            await asyncio.to_thread(rt.warm, SnapshotDType.FP32)
        try:
            body, headers = coordinator.export_model(task_id, version, base)
        except ApiError as exc:
            rt = coordinator.runtimes.get(task_id)
            if exc.status != 410 or base is not None or version is None or rt is None:
                raise
            # A published version that is no longer the current one (the only 410 of a
            # snapshot request): rebuilt off the event loop, from the store alone.
            async with rebuild_lock:
                body, headers = await asyncio.to_thread(
                    _older_version,
                    the_store,
                    task_id,
                    version,
                    rt.spec,
                    rt.config.downlink.to_config(),
                    exc,
                )
        return Response(body, media_type=ContentType.OCTET_STREAM, headers=headers)

    @app.get(
        Path.ADMIN_TASKS,
        response_model=list[TaskStatus],
        responses=_ERRORS,
        tags=["admin"],
        dependencies=[Depends(admin)],
    )
    async def list_tasks() -> list[TaskStatus]:
        """Every task in the store, by id; a refused one has state `refused` and `refused`
        saying why."""
        return coordinator.task_statuses()

    @app.get(
        Path.ADMIN_TASK,
        response_model=TaskStatus,
        responses=_ERRORS,
        tags=["admin"],
        dependencies=[Depends(admin)],
    )
    async def task_status(task_id: StoreId) -> TaskStatus:
        """A task's state, version and round counts (`refused` with the reason for a stored
        task this coordinator will not run)."""
        return coordinator.task_status(task_id)

    @app.get(
        Path.ADMIN_ROUNDS,
        response_model=list[RoundStatus],
        responses=_ERRORS,
        tags=["admin"],
        dependencies=[Depends(admin)],
    )
    async def task_rounds(
        request: Request,
        task_id: StoreId,
        last: Annotated[
            _QueryPage, Query(description="only the N newest rounds (still oldest first)")
        ] = None,
        before: Annotated[
            QueryBefore,
            Query(
                description="only the rounds older than this round of the task (paging backwards)"
            ),
        ] = None,
    ) -> list[RoundStatus]:
        """Every round of a task, by sequence; `last` and `before` answer a page of them."""
        _only_query(request, "last", "before")
        return coordinator.task_rounds(task_id, last, before)

    @app.post(
        Path.ADMIN_PAUSE,
        response_model=TaskStatus,
        responses=_ERRORS,
        tags=["admin"],
        dependencies=[Depends(admin)],
    )
    async def pause(task_id: StoreId) -> TaskStatus:
        """Stop opening rounds (a round in flight still closes)."""
        return coordinator.set_paused(task_id, True)

    @app.post(
        Path.ADMIN_RESUME,
        response_model=TaskStatus,
        responses=_ERRORS,
        tags=["admin"],
        dependencies=[Depends(admin)],
    )
    async def resume(task_id: StoreId) -> TaskStatus:
        """Open rounds again (409 `task_refused` for a task this coordinator refuses)."""
        return coordinator.set_paused(task_id, False)

    @app.post(
        Path.ADMIN_STOP,
        response_model=TaskStatus,
        responses=_ERRORS,
        tags=["admin"],
        dependencies=[Depends(admin)],
    )
    async def stop(task_id: StoreId) -> TaskStatus:
        """Stop the task for good (state `stopped`): its open round is abandoned ("stopped by
        the operator"), no round opens again, and its device requests get 409 `task_refused`.
        Its rounds, ledger and model stay readable. Stopping a stopped task answers its
        status."""
        return coordinator.stop_task(task_id)

    # -- secure rounds: the SecAgg+ stage endpoints (same signing, ledger and errors) ------

    add_secure_routes(
        app,
        coordinator=coordinator,
        verifier=verifier,
        config=config,
        metrics=metrics,
        device=device,
        device_or_admin=device_or_admin,
        errors=_ERRORS,
        target=_target,
        headers_of=_headers,
    )

    # -- operations ------------------------------------------------------------------------

    async def _warm_all_tasks_dp() -> Exception | None:
        """Compute the coordinator-wide epsilon off the event loop (new curves cost about
        0.25 s each, one per task config), so the answer below reads it from the cache; the
        error, if it fails (logged, and left out of the answer)."""
        try:
            await asyncio.to_thread(all_tasks_dp.get)
        except Exception as exc:
            log.exception("the coordinator-wide epsilon could not be computed")
            return exc
        return None

    @app.get(Path.METRICS, response_class=Response, tags=["ops"])
    async def prometheus() -> Response:
        """Prometheus text exposition."""
        await _warm_all_tasks_dp()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(READYZ, tags=["ops"])
    async def readyz() -> JSONResponse:
        """Readiness: 503 while the database refuses writes (the last write failed and none
        has committed since), while another connection holds its write lock, or when the
        check does not finish within a second; else 200. While writes fail, each call (at
        most one a second) tries a write that leaves the database as it was, so a
        coordinator that gets no traffic (a load balancer took it out) still sees the disk
        freed. The checks run on a thread of their own, never on the event loop."""
        failing = await readiness.error()
        body = {
            "ready": failing is None,
            "store_writable": failing is None,
            "store_error": failing,
            "tasks_unloaded": len(coordinator.unloaded),
        }
        if failing is None:
            return JSONResponse(body)
        return JSONResponse(body, 503, headers={H.RETRY_AFTER: str(_STORE_RETRY_S)})

    @app.get(Path.HEALTHZ, tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Liveness and a few counts (`ok` is always true: whether the coordinator can take
        writes is `/readyz`'s)."""
        failed = await _warm_all_tasks_dp()
        dp: dict[str, Any]
        if failed is None:
            dp = all_tasks_dp.get().to_json()
        else:  # liveness does not hang on the privacy arithmetic
            dp = {"error": f"not computed ({type(failed).__name__}; see the coordinator's log)"}
        return {
            "ok": True,
            "journal_mode": journal_mode,
            "tasks": len(coordinator.runtimes),
            "tasks_refused": len(coordinator.refused),
            "dp_all_tasks": dp,
        }

    # HEAD on the health and metrics routes: GET's status and headers without the body (RFC
    # 9110 section 9.3.2; uvicorn does not send a HEAD's body), for load balancers and uptime
    # checkers. It was 405. Left out of the OpenAPI spec. The other GET routes stay GET only
    # (405, `allow: GET`): a model download's HEAD would count a download and spend a snapshot
    # token, or else answer other headers than its GET (test_s54h_head_health.py).
    for path, endpoint in ((Path.HEALTHZ, healthz), (READYZ, readyz), (Path.METRICS, prometheus)):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)

    app.add_middleware(_ShutdownAnswer)  # inside WireMiddleware: its 503 is counted
    app.add_middleware(
        WireMiddleware,
        store=the_store,
        metrics=metrics,
        json_cap=config.json_body_cap,
        member=coordinator.attributable,
        body_timeout_s=config.body_timeout_s or None,
    )
    return app


# Delta frames an older version's rebuild reads from the store at once (`_older_version`):
# at most _REBUILD_PAGE of them, and no more than _REBUILD_BYTES of the largest legal frames
# (a dense downlink's frame is the model's size); the rest of its chain, up to
# MAX_EXPORT_CHAIN frames, is not held in memory with them.
_REBUILD_PAGE = 64
_REBUILD_BYTES = 64 << 20


def _older_version(
    store: Store,
    task_id: int,
    version: int,
    spec: ModelSpec,
    downlink: CodecConfig,
    gone: ApiError,
) -> tuple[bytes, dict[str, str]]:
    """(fp32 snapshot, headers) of a published version of a task that is no longer its current
    one: its initial model as the store keeps it, checked against version 0's digest, with
    the stored downlink delta frames of versions 1..`version` applied as devices apply them,
    the result checked against the version's stored digest. Reads the store only (call it off
    the event loop: up to `rounds.MAX_EXPORT_CHAIN` frames are decoded).

    Raises `gone` itself (the 410 answered before schema 4) for a task stored by schema 3 or
    older, which kept no initial model; else 410 `version_gone` naming the reason: a frame on
    the way emptied by `--keep-frames` (or its row missing), a version more than
    MAX_EXPORT_CHAIN versions from the initial model, a stored initial model or frame that
    fails its digest or does not decode (a damaged database).
    """
    initial = store.initial_params(task_id)
    if initial is None:
        raise gone
    missing = store.first_missing_frame(task_id, version)
    if missing is not None:
        raise _frame_gone(task_id, version, missing)
    cap = rounds.MAX_EXPORT_CHAIN
    if version > cap:
        raise ApiError(
            410,
            Reason.VERSION_GONE,
            f"version {version} of task {task_id} is {version} versions from its initial "
            f"model, and one export rebuilds at most {cap}: ask for version {cap} "
            f"(?version={cap}) and apply to it the delta chain ?version={version}&base={cap}, "
            f"in steps of at most {cap} versions (plume coordinator get-model --version "
            f"{version} does)",
        )
    first_digest = store.version_digest(task_id, 0)
    digest = store.version_digest(task_id, version)
    params = np.frombuffer(initial, dtype="<f4").astype(np.float32)
    if params.shape[0] != spec.size or model_digest(params).hex() != first_digest:
        raise _damaged(
            task_id,
            version,
            f"the initial model stored for task {task_id} does not match version 0's digest "
            f"{first_digest}; rebuild it from your copy of the initial model (plume "
            f"coordinator get-model --version {version} --initial FILE)",
        )
    codec = UpdateCodec(spec, downlink)
    page = max(1, min(_REBUILD_PAGE, _REBUILD_BYTES // DecodeLimits().frame_cap(spec)))
    at = 0
    while at < version:
        to = min(version, at + page)
        rows = store.chain(task_id, at, to)
        for v, frame in rows:
            if frame is None:  # emptied since the check above
                raise _frame_gone(task_id, version, v)
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    params = apply_delta(params, codec.decode(frame))
            except (CodecError, MessageError) as exc:
                raise _damaged(
                    task_id,
                    version,
                    f"the stored delta frame of version {v} does not decode ({exc}); restore "
                    "a backup",
                ) from None
        if len(rows) != to - at:  # a row deleted since the check above
            raise _frame_gone(task_id, version, at + len(rows) + 1)
        at = to
    got = model_digest(params).hex()
    if got != digest:
        raise _damaged(
            task_id,
            version,
            f"the model rebuilt from the stored initial model and delta frames has SHA-256 "
            f"{got}, not version {version}'s stored digest {digest}; restore a backup",
        )
    headers: dict[str, str] = {
        H.MODEL_VERSION: str(version),
        H.MODEL_DIGEST: got,
        H.MODEL_ENCODING: str(ModelEncoding.SNAPSHOT),
        H.MODEL_EXACT: "1",
    }
    return encode_snapshot(params, spec, SnapshotDType.FP32), headers


def _frame_gone(task_id: int, version: int, missing: int) -> ApiError:
    return ApiError(
        410,
        Reason.VERSION_GONE,
        f"version {version} of task {task_id} cannot be rebuilt from its initial model: the "
        f"delta frame of version {missing} is no longer stored (`serve --keep-frames` empties "
        "the frames of versions older than the newest max(N, max_chain)); export the versions "
        "to keep while they are current",
    )


def _damaged(task_id: int, version: int, why: str) -> ApiError:
    log.error("task %d: version %d cannot be rebuilt: %s", task_id, version, why)
    return ApiError(
        410,
        Reason.VERSION_GONE,
        f"version {version} of task {task_id} cannot be rebuilt: the database is damaged "
        f"(a hand edit, a disk fault): {why}",
    )
