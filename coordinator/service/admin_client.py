"""A small client for the admin API: create a task with its initial model, status, list, pause,
stop, and export a task's model (checked against its digest)."""

from __future__ import annotations

import json
import math
import os
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from compression import (
    CodecError,
    DecodeLimits,
    ModelSpec,
    UpdateCodec,
    decode_snapshot,
    encode_snapshot,
    model_digest,
)
from protocol.messages import (
    MessageError,
    RoundStatus,
    TaskConfig,
    TaskStatus,
    apply_delta,
    from_json,
    to_json,
    unpack_chain,
)
from protocol.names import ContentType, Header, ModelEncoding, Path
from protocol.tls import tls_verify

from .auth import admin_token_problem

__all__ = [
    "AdminClient",
    "AdminError",
    "ExportedModel",
    "MAX_ADMIN_RESPONSE",
    "MAX_ADMIN_RESPONSE_S",
]

# Answers are read raw and whole into memory, refused past a cap, so that a hostile or
# misconfigured server (or proxy) cannot make the operator's process buffer without bound. The
# largest legitimate answer is `GET /v1/admin/tasks/{id}/rounds`, every round of a task: a few
# hundred bytes a round with FedAvg's measurements (more for aggregators that report more).
# 64 MiB holds over 150,000 FedAvg rounds (tests/coordinator/test_admin_client_hostile.py
# measures a real task's), or 10,000 rounds of 6 kB; a task with more rounds than that (a task
# may have up to 1,000,000) is read a page at a time (`rounds(..., last=, before=)`), or whole
# with `max_response_bytes=`. The operator's process can hold it.
MAX_ADMIN_RESPONSE = 64 << 20
# A refusal is a sentence: its body is read up to this many bytes and the rest dropped.
_ERROR_BODY_CAP = 64 << 10
# Longest one answer may take to arrive whole by default, seconds: `timeout` bounds each read,
# so a server trickling bytes inside it would otherwise hold the client for cap x timeout.
MAX_ADMIN_RESPONSE_S = 600.0

# The longest `timeout` (each step of a request) an AdminClient takes, seconds: a day.
MAX_ADMIN_TIMEOUT_S = 86_400.0

T = TypeVar("T")

_DIGEST = re.compile(r"[0-9a-f]{64}")
# Versions one delta-chain request of `AdminClient.rebuild` spans; each answer is read under
# `max_response_bytes` (256 frames of a 1.7M-parameter model at the default downlink codec,
# 2% of the coordinates at 8 bits, are about 17 MB).
REBUILD_STEP = 256
# The furthest version from the initial model the coordinator rebuilds in one export (its
# `rounds.MAX_EXPORT_CHAIN`): `AdminClient.model` gets a version past it as that version's
# snapshot and the delta chain from there.
EXPORT_REACH = 1024


@dataclass(frozen=True)
class ExportedModel:
    """A task's model as `AdminClient.model` received it: decoded under the spec's limits and
    checked against the digest the coordinator sent.

    params: float32[d], in the order of `spec`. digest: SHA-256 hex of its canonical bytes
    (little-endian fp32), as `x-plume-model-digest` and `TaskStatus.model_digest` give it.
    snapshot: the fp32 snapshot as sent (`compression.encode_snapshot` bytes).
    """

    task_id: int
    version: int
    digest: str
    params: npt.NDArray[np.float32]
    spec: ModelSpec
    config: TaskConfig
    snapshot: bytes

    def arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        """Each tensor of the spec by name, in its shape (views of `params`)."""
        return {
            e.name: self.params[e.offset : e.offset + e.size].reshape(e.shape)
            for e in self.spec.entries
        }


def _as_is(data: Any) -> Any:
    return data


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _task_id(data: Any) -> int:
    task_id = _object(data)["task_id"]
    if type(task_id) is not int:
        raise TypeError(f"task_id {task_id!r} is not an integer")
    return task_id


def _task_created(data: Any) -> tuple[int, list[str] | None]:
    """`POST /v1/admin/tasks`'s task id and `warnings` (its strings; None when the answer
    has no list there: a coordinator older than the field). Lenient past the id: the task
    exists by then, and a warning the client cannot read must not stop its model's upload."""
    warnings = _object(data).get("warnings")
    if not isinstance(warnings, list):
        return _task_id(data), None
    return _task_id(data), [w for w in warnings if isinstance(w, str)]


def _reader(cls: type[T]) -> Callable[[Any], T]:
    return lambda data: from_json(cls, data)


def _list_reader(cls: type[T]) -> Callable[[Any], list[T]]:
    def read(data: Any) -> list[T]:
        if not isinstance(data, list):
            raise TypeError(f"expected a JSON list, got {type(data).__name__}")
        return [from_json(cls, item, f"$[{i}]") for i, item in enumerate(data)]

    return read


def _only_the_cap(exc: AdminError, reach: int) -> bool:
    """Whether a 410 for an older version is the coordinator's "one export rebuilds at most
    `reach` versions: ask for version `reach` (?version=`reach`) ..." (app.py), not a reason
    of the version's own."""
    return f"(?version={reach})" in exc.body


# How `AdminError.problem` starts when a coordinator older than ?last/?before answered every
# round for a page (`plume coordinator status` words it with its own flags).
PAGE_IGNORED = "the coordinator ignored ?last/?before and sent every round"


class AdminError(RuntimeError):
    """An admin request that did not succeed: the coordinator refused it (`status` >= 400, and
    `body` its text, normally `{"reason", "detail"}` JSON), or answered something this client
    does not read (`problem` says what: an encoded, oversized or too slow body, or a 2xx that
    is not JSON). str(): "METHOD PATH: STATUS BODY-OR-PROBLEM".

    `task_id` is set when `create_task` created the task but its initial model was not
    stored: the task stays `awaiting_model` (it runs no round). `status` is then 0 if the
    model's PUT got no answer at all (`problem` says why; the model may have landed)."""

    def __init__(
        self,
        method: str,
        path: str,
        status: int,
        body: str = "",
        problem: str = "",
        task_id: int | None = None,
    ) -> None:
        super().__init__(f"{method} {path}: {status} {problem or body}")
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        self.problem = problem
        self.task_id = task_id


class AdminClient:
    """`AdminClient(url, token)`; `transport` is the same httpx seam as the device SDK's.
    `verify` is `True`, `False`, an `ssl.SSLContext` or the path of a CA bundle (a PEM file or
    a directory of hashed certificates), read as the SDK's `Client` reads it
    (`protocol.tls.tls_verify`): a bad path is a `ValueError` naming it, at construction.

    Every answer is asked for and read as sent (`Accept-Encoding: identity`; one with a
    Content-Encoding is refused unread, never inflated), at most `max_response_bytes` of it
    (refusals: the first 64 KiB) and within `max_response_s` seconds.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        transport: httpx.BaseTransport | None = None,
        verify: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        timeout: float = 60.0,
        max_response_bytes: int = MAX_ADMIN_RESPONSE,
        max_response_s: float = MAX_ADMIN_RESPONSE_S,
    ) -> None:
        # A CA bundle's path (file or directory) becomes its context, as in the SDK's Client:
        # httpx 0.28 deprecates `verify=<str>`. ValueError naming a bad path, TypeError else.
        tls = tls_verify(verify)
        if (problem := admin_token_problem(token)) is not None:
            raise ValueError(f"the admin token {problem}")
        if httpx.URL(base_url).userinfo:
            # httpx would send them as Authorization: Basic, in place of the token's Bearer
            raise ValueError(
                "base_url has a user name or password before its host, which httpx would send "
                "as Authorization: Basic in place of the admin token; leave them out"
            )
        if not (0 < timeout <= MAX_ADMIN_TIMEOUT_S):  # NaN included
            # past about 9.2e9 s a socket timeout raised OverflowError at the first request
            raise ValueError(
                f"timeout must be a number of seconds in (0, {MAX_ADMIN_TIMEOUT_S:g}], got "
                f"{timeout!r}"
            )
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be at least 1")
        if not (0 < max_response_s < math.inf):  # NaN included
            raise ValueError("max_response_s must be a positive number of seconds")
        self.max_response_bytes = max_response_bytes
        self.max_response_s = max_response_s
        # The `warnings` of the last `create_task`'s POST (None: none yet, or an older
        # coordinator that sends no such field).
        self.created_warnings: list[str] | None = None
        self._http = httpx.Client(
            base_url=base_url,
            transport=transport,
            verify=tls,
            timeout=timeout,
            headers={"authorization": f"Bearer {token}", "accept-encoding": "identity"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, read: Callable[[Any], T] = _as_is, **request: Any) -> T:
        """Send one request; `read` of the JSON body of its 2xx answer, `AdminError` otherwise,
        also when `read` finds the JSON of the wrong shape (another service, another version)."""
        sent = self._http.build_request(method, path, **request)
        deadline = time.monotonic() + self.max_response_s
        response = self._http.send(sent, stream=True)
        try:
            body = self._read(response, deadline)
        finally:
            response.close()
        text = body.decode("utf-8", errors="replace")
        if response.status_code >= 400:
            raise _error(response, body=text)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # not JSON (another server), or nested too deep
            raise _error(response, body=text) from None
        try:
            return read(data)
        except (MessageError, TypeError, KeyError, ValueError, AttributeError) as exc:
            raise _error(
                response, problem=f"an answer of the wrong shape, not read: {str(exc)[:200]}"
            ) from None

    def _read(self, response: httpx.Response, deadline: float, cap: int | None = None) -> bytes:
        """The body as sent, under the caps: a 2xx past `cap` (default `max_response_bytes`)
        is refused, a refusal is cut at 64 KiB (its status says enough)."""
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _error(
                response,
                problem=f"a body with Content-Encoding {encoding!r}, which the admin client "
                "asks not to get and does not inflate (a compressed body can inflate without "
                "bound); is a proxy compressing answers on the way?",
            )
        refusal = response.status_code >= 400
        ok_cap = self.max_response_bytes if cap is None else cap
        cap = _ERROR_BODY_CAP if refusal else ok_cap
        declared = response.headers.get("content-length", "")
        if not refusal and declared.isascii() and declared.isdigit():
            if len(declared) > 19 or int(declared) > cap:
                raise self._too_large(response, cap)
        chunks: list[bytes] = []
        size = 0
        for chunk in _raw_chunks(response):
            if time.monotonic() > deadline:
                raise _error(
                    response,
                    problem=f"a body not received whole within {self.max_response_s:g} s "
                    "(max_response_s); abandoned",
                )
            if size + len(chunk) > cap:
                if refusal:
                    chunks.append(chunk[: cap - size])
                    break
                raise self._too_large(response, cap)
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def _too_large(self, response: httpx.Response, cap: int) -> AdminError:
        what = (
            "(max_response_bytes)"
            if cap == self.max_response_bytes
            else "(the largest snapshot of the task's model spec)"
        )
        return _error(
            response, problem=f"a body above the admin client's {cap}-byte cap {what}; not read"
        )

    def create_task(self, config: TaskConfig, params: npt.NDArray[np.float32]) -> int:
        """Create the task and upload its initial model (an fp32 snapshot); returns its id.

        Params the spec cannot hold raise `ValueError` before any request. If the task is
        created but its model is not stored, the `AdminError` carries its `task_id`.
        `created_warnings` is then the coordinator's warnings about the new task (a dp delta
        above 1/(10 N), a dp seed=, ...: what it logs; docs/http-api.md), None from a
        coordinator older than that field."""
        spec = ModelSpec.from_json([{"name": t.name, "shape": list(t.shape)} for t in config.spec])
        # Encoded first: a model that does not fit the spec must not leave a task behind.
        snapshot = encode_snapshot(np.asarray(params, dtype=np.float32), spec, "fp32")
        self.created_warnings = None
        task_id, self.created_warnings = self._call(
            "POST", Path.ADMIN_TASKS, _task_created, json=to_json(config)
        )
        path = Path.ADMIN_TASK_MODEL.format(task_id=task_id)
        try:
            self._call(
                "PUT", path, content=snapshot, headers={"content-type": "application/octet-stream"}
            )
        except AdminError as exc:
            exc.task_id = task_id
            raise
        except httpx.HTTPError as exc:
            what = str(exc) or type(exc).__name__
            raise AdminError(
                "PUT", path, 0, problem=f"no answer ({what})", task_id=task_id
            ) from exc
        return task_id

    def status(self, task_id: int) -> TaskStatus:
        return self._call("GET", Path.ADMIN_TASK.format(task_id=task_id), _reader(TaskStatus))

    def healthz(self) -> Any:
        """GET /healthz as JSON (liveness, task counts and `dp_all_tasks`, the epsilon of a
        device in every DP-accounted task: docs/operations.md), under this client's response
        caps and time limit."""
        return self._call("GET", Path.HEALTHZ)

    def tasks(self) -> list[TaskStatus]:
        """Every task in the store; a refused one has state "refused" and `refused` (why)."""
        return self._call("GET", Path.ADMIN_TASKS, _list_reader(TaskStatus))

    def rounds(
        self, task_id: int, last: int | None = None, before: int | None = None
    ) -> list[RoundStatus]:
        """The task's rounds, oldest first: every one, or only those older than round id
        `before`, and of these only the `last` newest (1 to 100,000; the coordinator refuses
        others, 422). Page backwards with `before=` the first round of the previous page."""
        path = Path.ADMIN_ROUNDS.format(task_id=task_id)
        params = {k: v for k, v in (("last", last), ("before", before)) if v is not None}
        page = self._call("GET", path, _list_reader(RoundStatus), params=params)
        # A coordinator older than the parameters ignores them and sends every round: a page
        # that long, or one holding a round not older than `before`, is such an answer (paging
        # backwards on it would never end). Round ids are shared by all tasks, so `before` may
        # be another task's id: no real page holds any round >= it (a task's round ids rise
        # with its seq, and pages are cut by seq).
        if (last is not None and len(page) > last) or (
            before is not None and any(r.round_id >= before for r in page)
        ):
            raise AdminError(
                "GET", path, 200,
                problem=f"{PAGE_IGNORED}: it predates them (upgrade it, or ask without them)",
            )  # fmt: skip
        return page

    def round(self, round_id: int) -> RoundStatus:
        """One round's status (for a secure round in flight: its stage and stage uploads)."""
        return self._call("GET", Path.ROUND.format(round_id=round_id), _reader(RoundStatus))

    def pause(self, task_id: int) -> TaskStatus:
        return self._call("POST", Path.ADMIN_PAUSE.format(task_id=task_id), _reader(TaskStatus))

    def resume(self, task_id: int) -> TaskStatus:
        path = Path.ADMIN_RESUME.format(task_id=task_id)
        return self._call("POST", path, _reader(TaskStatus))

    def stop(self, task_id: int) -> TaskStatus:
        """Stop the task for good (state "stopped"); stopping a stopped task is not an error."""
        return self._call("POST", Path.ADMIN_STOP.format(task_id=task_id), _reader(TaskStatus))

    def model(self, task_id: int, version: int | None = None) -> ExportedModel:
        """The task's current model, or its version `version`, as an fp32 snapshot decoded
        under its spec's limits (never pickle or np.load) and checked against the version
        and digest headers sent with it: a mismatch raises `AdminError`.

        An older version is rebuilt by the coordinator from the initial model it keeps and
        the stored delta frames, checked against the version's digest there and here. A
        version more than `EXPORT_REACH` (1,024) versions from the initial model is the
        snapshot of version 1,024 with the delta chain from it applied here (`rebuild`).
        404 `unknown_version`: never published. 410 `version_gone` (its `detail` says why):
        a task stored before the coordinator kept initial models (rebuild it from your copy
        of the initial model with `rebuild`), or a delta frame on the way emptied by
        `--keep-frames` (the version cannot be rebuilt), or a damaged database."""
        status = self.status(task_id)
        config, spec = self._layout(task_id, status)
        try:
            return self._snapshot(task_id, version, config, spec)
        except AdminError as exc:
            reach = EXPORT_REACH
            if exc.status != 410 or version is None or version <= reach:
                raise
            try:  # the coordinator rebuilds at most `reach` versions: the rest is done here
                base = self._snapshot(task_id, reach, config, spec)
            except AdminError as at_reach:
                # Version `version`'s own reason, unless it only said to ask for `reach`
                # (the cap's answer): then why `reach` is gone is why `version` is.
                raise (at_reach if _only_the_cap(exc, reach) else exc) from None
        return self.rebuild(task_id, version, base.params, reach)

    def _snapshot(
        self, task_id: int, version: int | None, config: TaskConfig, spec: ModelSpec
    ) -> ExportedModel:
        """One snapshot request (`model`): the version asked for, checked."""
        query = {} if version is None else {"version": version}
        path = Path.ADMIN_TASK_MODEL.format(task_id=task_id)
        body, response = self._binary(path, query, DecodeLimits().frame_cap(spec))
        got_version, digest = _model_headers(response, ModelEncoding.SNAPSHOT)
        if version is not None and got_version != version:
            raise _error(response, problem=f"version {got_version}, not the {version} asked for")
        try:
            values = decode_snapshot(body, spec)
        except CodecError as exc:
            raise _error(response, problem=f"a snapshot the decoder refuses ({exc})") from None
        _check_digest(response, values, digest, "model")
        return ExportedModel(task_id, got_version, digest, values, spec, config, body)

    def rebuild(
        self,
        task_id: int,
        version: int,
        base_params: npt.ArrayLike,
        base_version: int = 0,
    ) -> ExportedModel:
        """Version `version` of the task rebuilt here from `base_params` (float32[d]), the
        caller's copy of version `base_version` (the initial model for 0, for a task stored
        before the coordinator kept it; `model` asks the coordinator otherwise), with the
        stored downlink delta frames (`?version=...&base=...`), applied as devices apply them
        (`version == base_version` only checks the copy). The base is checked against its
        version's digest first, and the model after every step against the digest sent with
        it; `AdminError` on any mismatch, and 410 `version_gone` once a frame on the way is no
        longer stored (`--keep-frames`)."""
        if not 0 <= base_version <= version:
            raise ValueError(f"version {version} must not be below base_version {base_version}")
        status = self.status(task_id)
        config, spec = self._layout(task_id, status)
        params = np.array(base_params, dtype=np.float32).reshape(-1)
        if params.shape[0] != spec.size:
            raise ValueError(f"base_params has {params.shape[0]} values; the spec has {spec.size}")
        codec = UpdateCodec(spec, config.downlink.to_config())
        path = Path.ADMIN_TASK_MODEL.format(task_id=task_id)
        at = base_version
        while True:  # at least one request: `version == base_version` checks the base
            to = min(version, at + REBUILD_STEP)
            body, response = self._binary(
                path, {"version": to, "base": at}, self.max_response_bytes
            )
            got_version, digest = _model_headers(response, ModelEncoding.DELTA_CHAIN)
            base_digest = response.headers.get(Header.MODEL_BASE_DIGEST, "")
            if got_version != to or response.headers.get(Header.MODEL_BASE_VERSION) != str(at):
                raise _error(response, problem=f"not the chain from version {at} to {to}")
            if not _DIGEST.fullmatch(base_digest):
                raise _error(response, problem=f"no base digest header ({base_digest[:80]!r})")
            if model_digest(params).hex() != base_digest:
                raise _error(
                    response,
                    problem=f"the base model given is not version {at} of task {task_id} (its "
                    f"SHA-256 is {model_digest(params).hex()}; version {at}'s is {base_digest})",
                )
            try:
                frames = unpack_chain(
                    body, max_frames=to - at, max_frame_bytes=DecodeLimits().frame_cap(spec)
                )
                if len(frames) != to - at:
                    raise MessageError(f"{len(frames)} frames for {to - at} versions")
                with np.errstate(over="ignore", invalid="ignore"):
                    for frame in frames:
                        params = apply_delta(params, codec.decode(frame))
            except (CodecError, MessageError) as exc:
                problem = f"a delta chain the decoder refuses ({exc})"
                raise _error(response, problem=problem) from None
            _check_digest(response, params, digest, f"model rebuilt to version {to}")
            at = to
            if at == version:
                break
        snapshot = encode_snapshot(params, spec, "fp32")
        return ExportedModel(task_id, version, digest, params, spec, config, snapshot)

    def _layout(self, task_id: int, status: TaskStatus) -> tuple[TaskConfig, ModelSpec]:
        """A task's config and flat layout; for a refused task's stored config, which does not
        parse, the coordinator's own refusal of its model (409)."""
        spec = _spec_of(status.config)
        if spec is None or not isinstance(status.config, TaskConfig):
            path = Path.ADMIN_TASK_MODEL.format(task_id=task_id)
            self._call("GET", path)
            raise AdminError(
                "GET", path, 0, problem="a model for a task whose config does not parse"
            )
        return status.config, spec

    def _binary(self, path: str, query: dict[str, int], cap: int) -> tuple[bytes, httpx.Response]:
        """A binary answer (application/octet-stream) read under `cap` bytes."""
        sent = self._http.build_request("GET", path, params=query)
        deadline = time.monotonic() + self.max_response_s
        response = self._http.send(sent, stream=True)
        try:
            body = self._read(response, deadline, cap)
        finally:
            response.close()
        if response.status_code >= 400:
            raise _error(response, body=body.decode("utf-8", errors="replace"))
        got_type = response.headers.get(Header.CONTENT_TYPE, "").split(";")[0].strip()
        if got_type != ContentType.OCTET_STREAM:
            raise _error(response, problem=f"a {got_type or 'untyped'} body, not a model")
        return body, response

    def bandwidth(self, round_id: int) -> dict[str, Any]:
        return self._call("GET", Path.BANDWIDTH.format(round_id=round_id), _object)


def _model_headers(response: httpx.Response, encoding: ModelEncoding) -> tuple[int, str]:
    """(version, digest) a model answer names, which must be in `encoding`."""
    got = response.headers.get(Header.MODEL_ENCODING, "")
    if got != encoding:
        raise _error(response, problem=f"a model encoded as {got[:40]!r}, not {encoding}")
    raw_version = response.headers.get(Header.MODEL_VERSION, "")
    digest = response.headers.get(Header.MODEL_DIGEST, "")
    if not (raw_version.isascii() and raw_version.isdigit() and len(raw_version) <= 19):
        raise _error(response, problem=f"no model version header ({raw_version[:40]!r})")
    if not _DIGEST.fullmatch(digest):
        raise _error(response, problem=f"no model digest header ({digest[:80]!r})")
    return int(raw_version), digest


def _check_digest(
    response: httpx.Response, params: npt.NDArray[np.float32], digest: str, what: str
) -> None:
    got = model_digest(params).hex()
    if got != digest:
        raise _error(
            response,
            problem=f"a {what} whose SHA-256 {got} is not the digest {digest} sent with it "
            "(damaged on the way?); nothing kept",
        )


def _spec_of(config: TaskConfig | dict[str, Any]) -> ModelSpec | None:
    """A task config's flat layout (None for a stored config that does not parse)."""
    if not isinstance(config, TaskConfig):
        return None
    return ModelSpec.from_json([{"name": t.name, "shape": list(t.shape)} for t in config.spec])


def _error(response: httpx.Response, *, body: str = "", problem: str = "") -> AdminError:
    request = response.request
    return AdminError(request.method, request.url.path, response.status_code, body, problem)


def _raw_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body as sent (never inflated): whole if a transport built it in memory, else the
    stream's raw chunks as they arrive."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        yield from response.iter_raw()
        return
    yield content
