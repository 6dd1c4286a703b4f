"""A small client for the admin API (create a task with its initial model, status, list, pause)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from compression import ModelSpec, encode_snapshot
from protocol.messages import (
    MessageError,
    RoundStatus,
    TaskConfig,
    TaskStatus,
    from_json,
    to_json,
)
from protocol.names import Path

__all__ = ["AdminClient", "AdminError", "MAX_ADMIN_RESPONSE", "MAX_ADMIN_RESPONSE_S"]

# Answers are read raw and whole into memory, refused past a cap, so that a hostile or
# misconfigured server (or proxy) cannot make the operator's process buffer without bound. The
# largest legitimate answer is `GET /v1/admin/tasks/{id}/rounds`, every round of a task: a few
# hundred bytes a round with FedAvg's measurements (more for aggregators that report more).
# 64 MiB holds over 150,000 FedAvg rounds (tests/coordinator/test_admin_client_hostile.py
# measures a real task's), or 10,000 rounds of 6 kB; a task with more rounds than that (a task
# may have up to 1,000,000) needs `max_response_bytes=`. The operator's process can hold it.
MAX_ADMIN_RESPONSE = 64 << 20
# A refusal is a sentence: its body is read up to this many bytes and the rest dropped.
_ERROR_BODY_CAP = 64 << 10
# Longest one answer may take to arrive whole by default, seconds: `timeout` bounds each read,
# so a server trickling bytes inside it would otherwise hold the client for cap x timeout.
MAX_ADMIN_RESPONSE_S = 600.0

T = TypeVar("T")


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


def _reader(cls: type[T]) -> Callable[[Any], T]:
    return lambda data: from_json(cls, data)


def _list_reader(cls: type[T]) -> Callable[[Any], list[T]]:
    def read(data: Any) -> list[T]:
        if not isinstance(data, list):
            raise TypeError(f"expected a JSON list, got {type(data).__name__}")
        return [from_json(cls, item, f"$[{i}]") for i, item in enumerate(data)]

    return read


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
        verify: bool | str = True,
        timeout: float = 60.0,
        max_response_bytes: int = MAX_ADMIN_RESPONSE,
        max_response_s: float = MAX_ADMIN_RESPONSE_S,
    ) -> None:
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be at least 1")
        if not (0 < max_response_s < math.inf):  # NaN included
            raise ValueError("max_response_s must be a positive number of seconds")
        self.max_response_bytes = max_response_bytes
        self.max_response_s = max_response_s
        self._http = httpx.Client(
            base_url=base_url,
            transport=transport,
            verify=verify,
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

    def _read(self, response: httpx.Response, deadline: float) -> bytes:
        """The body as sent, under the caps: a 2xx past `max_response_bytes` is refused, a
        refusal is cut at 64 KiB (its status says enough)."""
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _error(
                response,
                problem=f"a body with Content-Encoding {encoding!r}, which the admin client "
                "asks not to get and does not inflate (a compressed body can inflate without "
                "bound); is a proxy compressing answers on the way?",
            )
        refusal = response.status_code >= 400
        cap = _ERROR_BODY_CAP if refusal else self.max_response_bytes
        declared = response.headers.get("content-length", "")
        if not refusal and declared.isascii() and declared.isdigit():
            if len(declared) > 19 or int(declared) > cap:
                raise self._too_large(response)
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
                raise self._too_large(response)
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def _too_large(self, response: httpx.Response) -> AdminError:
        return _error(
            response,
            problem=f"a body above the admin client's {self.max_response_bytes}-byte cap "
            "(max_response_bytes); not read",
        )

    def create_task(self, config: TaskConfig, params: npt.NDArray[np.float32]) -> int:
        """Create the task and upload its initial model (an fp32 snapshot); returns its id.

        Params the spec cannot hold raise `ValueError` before any request. If the task is
        created but its model is not stored, the `AdminError` carries its `task_id`."""
        spec = ModelSpec.from_json([{"name": t.name, "shape": list(t.shape)} for t in config.spec])
        # Encoded first: a model that does not fit the spec must not leave a task behind.
        snapshot = encode_snapshot(np.asarray(params, dtype=np.float32), spec, "fp32")
        task_id = self._call("POST", Path.ADMIN_TASKS, _task_id, json=to_json(config))
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

    def tasks(self) -> list[TaskStatus]:
        """Every task in the store; a refused one has state "refused" and `refused` (why)."""
        return self._call("GET", Path.ADMIN_TASKS, _list_reader(TaskStatus))

    def rounds(self, task_id: int) -> list[RoundStatus]:
        path = Path.ADMIN_ROUNDS.format(task_id=task_id)
        return self._call("GET", path, _list_reader(RoundStatus))

    def round(self, round_id: int) -> RoundStatus:
        """One round's status (for a secure round in flight: its stage and stage uploads)."""
        return self._call("GET", Path.ROUND.format(round_id=round_id), _reader(RoundStatus))

    def pause(self, task_id: int) -> TaskStatus:
        return self._call("POST", Path.ADMIN_PAUSE.format(task_id=task_id), _reader(TaskStatus))

    def resume(self, task_id: int) -> TaskStatus:
        path = Path.ADMIN_RESUME.format(task_id=task_id)
        return self._call("POST", path, _reader(TaskStatus))

    def bandwidth(self, round_id: int) -> dict[str, Any]:
        return self._call("GET", Path.BANDWIDTH.format(round_id=round_id), _object)


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
