"""`Client` and `AsyncClient` behave the same for the same coordinator answers: a property test
drives both, with the same device key, through the same scripted coordinator and the same
faults (5xx, 429, a lost answer after the request landed, no connection, a 200 that is no
receipt, a refusal), and compares what each did: the requests sent, what each call returned or
raised, the app directory afterwards (residual, pending upload, records) and the bandwidth
counted. Plain rounds through `participate` and check-ins, and secure rounds."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import encode_snapshot
from protocol.messages import CheckInResponse, to_json
from protocol.names import Header, ModelEncoding
from protocol.secagg import Stage, model_digest
from sdk import AsyncClient, Client
from sdk._types import TrainResult
from sdk.client import ClientError
from sdk.device_store import DeviceStore

from .test_client import SPEC
from .test_h51_task_residuals import _task
from .test_h61_inflight import SecureFake, secure_task

FAULTS = ["ok", "503", "429", "lost", "connect", "garbage", "closed", "late_garbage"]
OUTCOMES = ["committed", "abandoned", "pending", "excluded", "unknown"]
LEDGER = "x-plume-ledger-round"


class _Trainer:
    """Adds a fixed step to the params (deterministic), 8 examples."""

    def train(
        self,
        params: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> TrainResult:
        step = np.linspace(-0.3, 0.3, params.size).astype(np.float32) + rng.normal(
            0, 0.01, params.size
        ).astype(np.float32)
        return TrainResult((params + step).astype(np.float32), 8, 0.5)


class PlainFake:
    """A scripted coordinator of one plain task (task 1): each check-in assigns the current
    round (5 first), which moves on once an upload to it is accepted; a check-in naming a
    round answers `outcomes[round - 5]`."""

    def __init__(self, outcomes: list[str]) -> None:
        self.outcomes = outcomes
        self.round = 5
        self.keys: dict[str, int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/checkin":
            asked = json.loads(request.content).get("awaiting_round")
            a = _task(1, self.round)
            answer = to_json(CheckInResponse("train", 0.0, replace(a, deadline_unix=4e9)))
            if asked is not None:
                answer["round_outcome"] = self.outcomes[(asked - 5) % len(self.outcomes)]
            return httpx.Response(200, json=answer, headers={LEDGER: str(self.round)})
        if path == "/v1/tasks/1/model":
            params = np.zeros(SPEC.size, np.float32)
            return httpx.Response(
                200,
                content=encode_snapshot(params, SPEC, dtype="fp32"),
                headers={
                    Header.MODEL_ENCODING: ModelEncoding.SNAPSHOT,
                    Header.MODEL_DIGEST: model_digest(params).hex(),
                    Header.MODEL_VERSION: "1",
                    LEDGER: str(self.round),
                },
            )
        round_id = int(path.split("/")[3])
        key = request.headers[Header.IDEMPOTENCY_KEY]
        if round_id != self.round and key not in self.keys:
            return httpx.Response(409, json={"reason": "round_closed", "detail": "over"})
        duplicate = key in self.keys
        self.keys.setdefault(key, round_id)
        if round_id == self.round:
            self.round += 1
        receipt = {
            "round_id": round_id, "device_id": "0" * 32, "accepted": True,
            "duplicate": duplicate, "payload_bytes": len(request.content), "reports": 1,
        }  # fmt: skip
        return httpx.Response(200, json=receipt, headers={LEDGER: str(round_id)})


@dataclass
class Faulty:
    """Meets request i with `faults[i]` (then "ok"); records (method, path, body digest)."""

    base: Callable[[httpx.Request], httpx.Response]
    faults: list[str]

    def __post_init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        body = request.content
        # A masked input's bytes carry the device's fresh keys' masks: only its size is kept.
        tag = str(len(body)) if "/stages/" in request.url.path else hashlib.sha256(body).hexdigest()
        self.seen.append((request.method, request.url.path, tag))
        fault = self.faults[len(self.seen) - 1] if len(self.seen) <= len(self.faults) else "ok"
        if fault == "503":
            return httpx.Response(503, text="busy")
        if fault == "429":
            return httpx.Response(429, text="slow down", headers={Header.RETRY_AFTER: "0"})
        if fault == "connect":
            raise httpx.ConnectError("no route", request=request)
        if fault == "garbage":
            return httpx.Response(200, text="<html>portal</html>")
        if fault == "closed":
            return httpx.Response(409, json={"reason": "round_closed", "detail": "late"})
        response = self.base(request)
        if fault == "lost":
            raise httpx.ReadTimeout("the answer never came", request=request)
        if fault == "late_garbage":
            return httpx.Response(200, text="<html>portal</html>")
        return response


def _what(result: Any) -> Any:
    """A comparable summary of what a call returned or raised."""
    if isinstance(result, ClientError):
        return ("ClientError", result.status, result.reason)
    if isinstance(result, BaseException):
        return (type(result).__name__,)
    if result is None:
        return None
    if isinstance(result, CheckInResponse):
        return ("check-in", result.action, result.round_outcome)
    fields = ["round_id", "task_id", "receipt", "loss", "num_examples", "bytes_up", "bytes_down"]
    fields += ["stages", "completed", "detail"] if hasattr(result, "stages") else []
    return tuple(str(getattr(result, f)) for f in fields)


def _app_state(root: Path, size: int, task_id: int) -> Any:
    store = DeviceStore(root)
    ef = store.load_residual(size, task_id)
    pending = store.load_pending()
    records = {r: store.load_accepted(r) for r in store.accepted_rounds()}
    return (
        None if ef is None else ef.residual.tobytes(),
        None if pending is None else (pending.round_id, pending.frame),
        {r: None if rec is None else rec.frame for r, rec in records.items()},
    )


@contextlib.contextmanager
def _no_fsync() -> Iterator[None]:
    """The app directory's fsyncs (most of a round's time on a slow disk) skipped: durability
    is not what these tests compare, and each example runs several rounds twice."""
    real = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = real


def _pair(base: Path) -> tuple[Path, Path]:
    """Two app directories holding the same device key."""
    a, b = base / "sync", base / "async"
    DeviceStore(a).private_key()
    b.mkdir()
    shutil.copy(a / "device_key", b / "device_key")
    return a, b


def _sync(root: Path, handler: Faulty, steps: list[str]) -> list[Any]:
    out: list[Any] = []
    x, y = np.zeros((8, 2), np.float32), np.zeros(8, np.int64)
    with Client(
        "http://coord", str(root), transport=httpx.MockTransport(handler), retries=2,
        backoff_s=0.0, sleep=lambda s: None,
    ) as client:  # fmt: skip
        for step in steps:
            try:
                if step == "participate":
                    out.append(_what(client.participate(_Trainer(), x, y, task_id=1)))
                else:
                    out.append(_what(client.check_in(1)))
            except (ClientError, httpx.TransportError, ValueError) as exc:
                out.append(_what(exc))
        out.append(client.bandwidth)
    return out


def _async(root: Path, handler: Faulty, steps: list[str]) -> list[Any]:
    async def run() -> list[Any]:
        out: list[Any] = []
        x, y = np.zeros((8, 2), np.float32), np.zeros(8, np.int64)
        async with AsyncClient(
            "http://coord", str(root), transport=httpx.MockTransport(handler), retries=2,
            backoff_s=0.0,
        ) as client:  # fmt: skip
            for step in steps:
                try:
                    if step == "participate":
                        out.append(_what(await client.participate(_Trainer(), x, y, task_id=1)))
                    else:
                        out.append(_what(await client.check_in(1)))
                except (ClientError, httpx.TransportError, ValueError) as exc:
                    out.append(_what(exc))
            out.append(client.bandwidth)
        return out

    return asyncio.run(run())


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    hits=st.dictionaries(st.integers(0, 11), st.sampled_from(FAULTS[1:]), max_size=4),
    outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=4),
    steps=st.lists(st.sampled_from(["participate", "check_in"]), min_size=2, max_size=4),
)
def test_plain_rounds_sync_and_async_clients_agree(
    hits: dict[int, str], outcomes: list[str], steps: list[str]
) -> None:
    faults = [hits.get(i, "ok") for i in range(12)]
    with tempfile.TemporaryDirectory() as tmp, _no_fsync():
        a, b = _pair(Path(tmp))
        fa, fb = Faulty(PlainFake(outcomes), faults), Faulty(PlainFake(outcomes), faults)
        # Execute
        got_sync, got_async = _sync(a, fa, steps), _async(b, fb, steps)
        # Assert: the same requests, results, bytes counted and app directory
        assert fa.seen == fb.seen
        assert got_sync == got_async
        assert _app_state(a, SPEC.size, 1) == _app_state(b, SPEC.size, 1)


def _secure_sync(root: Path, handler: Faulty, drop: Stage | None) -> list[Any]:
    delta = np.linspace(-0.2, 0.2, SPEC.size).astype(np.float32)
    with Client(
        "http://coord", str(root), transport=httpx.MockTransport(handler), retries=1,
        backoff_s=0.0, sleep=lambda s: None,
    ) as client:  # fmt: skip
        try:
            result = _what(client.secure_round(secure_task(1, 101), lambda p: (delta, 8, 0.0), drop_at=drop))  # fmt: skip
        except (ClientError, httpx.TransportError, ValueError) as exc:
            result = _what(exc)
        return [result, client.bandwidth]


def _secure_async(root: Path, handler: Faulty, drop: Stage | None) -> list[Any]:
    delta = np.linspace(-0.2, 0.2, SPEC.size).astype(np.float32)

    async def run() -> list[Any]:
        async with AsyncClient(
            "http://coord", str(root), transport=httpx.MockTransport(handler), retries=1,
            backoff_s=0.0,
        ) as client:  # fmt: skip
            try:
                result = _what(await client.secure_round(secure_task(1, 101), lambda p: (delta, 8, 0.0), drop_at=drop))  # fmt: skip
            except (ClientError, httpx.TransportError, ValueError) as exc:
                result = _what(exc)
            return [result, client.bandwidth]

    return asyncio.run(run())


# Faults that keep a stage's request from reaching the scripted server (a retry then sends it):
# a lost answer or a late garbage answer forwards the request, and the fake's SecAgg server
# refuses a stage message twice, so those are left to the plain test.
SECURE_FAULTS = ["ok", "503", "429", "connect", "garbage", "closed"]


@settings(derandomize=True, max_examples=25, deadline=None)
@given(
    hits=st.dictionaries(st.integers(0, 9), st.sampled_from(SECURE_FAULTS[1:]), max_size=3),
    drop=st.sampled_from([None, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK]),
)
def test_secure_rounds_sync_and_async_clients_agree(
    hits: dict[int, str], drop: Stage | None
) -> None:
    faults = [hits.get(i, "ok") for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp, _no_fsync():
        a, b = _pair(Path(tmp))
        fa, fb = Faulty(SecureFake(), faults), Faulty(SecureFake(), faults)
        got_sync, got_async = _secure_sync(a, fa, drop), _secure_async(b, fb, drop)
        assert fa.seen == fb.seen
        assert got_sync == got_async
        assert _app_state(a, SPEC.size, 1) == _app_state(b, SPEC.size, 1)
