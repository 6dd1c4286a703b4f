"""The device against a hostile or broken coordinator: whatever it answers, the SDK ends with a
`ClientError` naming it (or the documented type), within a bounded wait, and leaves the app
directory (model version, error-feedback residual, pending upload) as it was."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from compression import CodecConfig, ErrorFeedback, UpdateCodec, encode_snapshot, model_digest
from protocol.messages import Assignment, to_json
from protocol.names import Header, ModelEncoding
from protocol.secagg import SecAggError, Stage
from sdk import AsyncClient, Client
from sdk.client import ClientError, SecureRoundReport
from sdk.device_store import DeviceStore
from sdk.secure import HttpSecureDevice, SecureParticipant
from tests.coordinator.test_service_support import StageClock, expire_stage

from .test_client import RECEIPT, SPEC, _assignment
from .test_client_secure import ShiftTrainer

Handler = Callable[[httpx.Request], httpx.Response]
WAIT = b'{"action": "wait", "retry_after_s": 1.0}'


class Sleeps(list[float]):
    """`sleep=` for a Client: records each wait and refuses what `time.sleep` refuses; with
    `real`, also sleeps."""

    def __init__(self, real: bool = False) -> None:
        super().__init__()
        self.real = real

    def __call__(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise AssertionError(f"time.sleep({seconds}) would raise or never return")
        self.append(seconds)
        if self.real:
            time.sleep(seconds)


def _data() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    return np.zeros((8, 4), np.float32), np.zeros(8, np.int64)


def _app_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def _app_with_state(root: Path) -> dict[str, bytes]:
    """An app directory holding task 1's model at version 3, a residual and a pending upload
    for round 4; returns its files' bytes."""
    client = Client("http://coord", str(root), transport=httpx.MockTransport(_unreachable))
    params = np.linspace(-1, 1, SPEC.size, dtype=np.float32)
    client._core.store.save_model(1, params, 3, model_digest(params).hex(), True)
    a = dataclasses.replace(_assignment(), round_id=4)
    client._core.encode(a, SPEC, params, params + np.float32(0.1), 8)
    return _app_files(root)


def _unreachable(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request expected: {request.method} {request.url.path}")


def _check_in_server(body: bytes, seen: list[str]) -> Handler:
    """Answers every check-in with `body` (status 200) and records every request's path."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/v1/checkin":
            return httpx.Response(200, content=body)
        return httpx.Response(500, json={"reason": "x", "detail": "not expected"})

    return handler


def _train_answer(**changes: Any) -> bytes:
    """A "train" check-in answer whose assignment has `changes` (NaN and inf as JSON's
    non-standard NaN / Infinity, which Python's json parser reads)."""
    assignment = {**to_json(_assignment()), **changes}
    return json.dumps({"action": "train", "retry_after_s": 0.0, "assignment": assignment}).encode()


# -- waits: Retry-After and retry_after_s ------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "-inf", "-0.5"])
def test_a_retry_after_header_that_is_no_wait_falls_back_to_backoff(
    tmp_path: Path, value: str
) -> None:
    # Prepare: two 503s with a Retry-After that time.sleep would refuse (or sleep forever on)
    answers = [
        httpx.Response(503, headers={"retry-after": value}, json={"reason": "store_unavailable"}),
        httpx.Response(503, headers={"retry-after": value}, json={"reason": "store_unavailable"}),
        httpx.Response(200, content=WAIT),
    ]
    sleeps = Sleeps()
    transport = httpx.MockTransport(lambda r: answers.pop(0))

    # Execute
    with Client("http://coord", str(tmp_path), transport=transport, sleep=sleeps) as c:
        answer = c.check_in(1)
        backoff_s = c._core.backoff_s

    # Assert: the retries waited the client's own backoff (backoff_s * 2**attempt with equal
    # jitter: half of it to all of it), and the third answer came through
    assert answer.action == "wait" and len(sleeps) == 2
    for attempt, slept in enumerate(sleeps):
        full = backoff_s * 2**attempt
        assert full / 2 <= slept <= full


@pytest.mark.parametrize("value", ["NaN", "-1.0", "Infinity", "-Infinity"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_check_in_wait_that_is_no_wait_is_a_bad_response(
    tmp_path: Path, value: str, kind: str
) -> None:
    # Prepare: "wait" with a retry_after_s that is not a non-negative finite number
    body = b'{"action": "wait", "retry_after_s": ' + value.encode() + b"}"
    seen: list[str] = []
    x, y = _data()

    # Execute
    with pytest.raises(ClientError) as info:
        if kind == "sync":
            sleeps = Sleeps()
            transport = httpx.MockTransport(_check_in_server(body, seen))
            with Client("http://coord", str(tmp_path), transport=transport, sleep=sleeps) as c:
                c.participate(ShiftTrainer(0.01), x, y, max_wait_s=5.0)
            assert sleeps == []
        else:

            async def run() -> None:
                transport = httpx.MockTransport(_check_in_server(body, seen))
                async with AsyncClient("http://coord", str(tmp_path), transport=transport) as c:
                    await c.participate(ShiftTrainer(0.01), x, y, max_wait_s=5.0)

            asyncio.run(run())

    # Assert: one check-in, refused with a sentence naming the field
    assert info.value.reason == "bad_response" and "retry_after_s" in info.value.detail
    assert seen == ["/v1/checkin"]


def test_a_wait_longer_than_max_wait_returns_none_without_sleeping(tmp_path: Path) -> None:
    # Prepare: the largest finite wait
    seen: list[str] = []
    sleeps = Sleeps()
    transport = httpx.MockTransport(
        _check_in_server(b'{"action": "wait", "retry_after_s": 1e308}', seen)
    )
    x, y = _data()
    # Execute
    with Client("http://coord", str(tmp_path), transport=transport, sleep=sleeps) as c:
        report = c.participate(ShiftTrainer(0.01), x, y, max_wait_s=5.0)
    # Assert
    assert report is None and sleeps == [] and seen == ["/v1/checkin"]


# -- the check-in answer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"round_id": -5}, "round_id"),
        ({"round_id": 2**64}, "round_id"),
        ({"task_id": 2**70}, "task_id"),
        ({"base_version": -1}, "base_version"),
        ({"max_upload_bytes": -1}, "max_upload_bytes"),
        ({"deadline_unix": math.nan}, "deadline_unix"),
        ({"deadline_unix": math.inf}, "deadline_unix"),
        ({"training": {"local_epochs": 0}}, "local_epochs"),
        ({"training": {"local_epochs": 10**9}}, "local_epochs"),
        ({"training": {"batch_size": 0}}, "batch_size"),
        ({"training": {"lr": math.nan}}, "lr"),
        ({"training": {"lr": -0.1}}, "lr"),
        ({"codec": {"topk": 5.0}}, "codec"),
        ({"codec": {"bits": 99}}, "codec"),
        ({"codec": {"index": "zzz"}}, "codec"),
    ],
)
def test_an_assignment_no_coordinator_sends_is_refused_before_any_download(
    tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    # Prepare: a device holding a model, a residual and a pending upload
    files = _app_with_state(tmp_path)
    seen: list[str] = []
    transport = httpx.MockTransport(_check_in_server(_train_answer(**changes), seen))
    x, y = _data()

    # Execute
    with Client("http://coord", str(tmp_path), transport=transport, sleep=Sleeps()) as c:
        with pytest.raises(ClientError) as info:
            c.check_in(1)
        with pytest.raises(ClientError):
            c.participate(ShiftTrainer(0.01), x, y, max_wait_s=5.0)

    # Assert: refused at the check-in, naming the field; nothing downloaded, trained or changed
    assert info.value.reason == "bad_response" and field in info.value.detail
    assert set(seen) <= {"/v1/checkin", "/v1/rounds/4/updates"}  # the pending upload's retry
    assert _app_files(tmp_path) == files


def test_an_assignment_for_another_task_than_asked_is_refused(tmp_path: Path) -> None:
    # Prepare: the device asks for task 1 and is handed task 2
    files = _app_with_state(tmp_path)
    seen: list[str] = []
    transport = httpx.MockTransport(_check_in_server(_train_answer(task_id=2), seen))
    # Execute
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        with pytest.raises(ClientError) as info:
            c.check_in(1)
        untargeted = c.check_in()  # any task: task 2 is a fine answer
    # Assert: task 1's model stays the one held
    assert info.value.reason == "bad_response" and "task 2" in info.value.detail
    assert untargeted.assignment is not None and untargeted.assignment.task_id == 2
    assert _app_files(tmp_path) == files


def test_train_without_an_assignment_is_a_bad_response(tmp_path: Path) -> None:
    transport = httpx.MockTransport(
        _check_in_server(b'{"action": "train", "retry_after_s": 0}', [])
    )
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        with pytest.raises(ClientError, match="no assignment") as info:
            c.check_in(1)
    assert info.value.reason == "bad_response"


def test_a_trainer_that_cannot_train_the_task_keeps_the_held_model(tmp_path: Path) -> None:
    # Prepare: a trainer whose model has another layout than the assignment's
    from compression import ModelSpec

    files = _app_with_state(tmp_path)

    class Other(ShiftTrainer):
        spec = ModelSpec.from_shapes([("w", (36,))])

    x, y = _data()
    # Execute: refused before any request (the download would replace the held model)
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(_unreachable)) as c:
        with pytest.raises(ValueError, match="does not have the layout"):
            c.train_round(_assignment(), Other(0.01), x, y)
    # Assert
    assert _app_files(tmp_path) == files


def test_an_assignment_whose_layout_could_not_be_kept_with_an_upload_is_refused(
    tmp_path: Path,
) -> None:
    # Prepare: the task's shapes, but a tensor name of 600 KiB: kept in pending.json with the
    # upload, it would pass the 1 MiB cap on reading it back (the device stuck for good)
    files = _app_with_state(tmp_path)
    spec = [{"name": "w" * (600 << 10), "shape": [4, 8]}, {"name": "b", "shape": [4]}]
    seen: list[str] = []
    transport = httpx.MockTransport(_check_in_server(_train_answer(spec=spec), seen))
    x, y = _data()
    # Execute
    with Client("http://coord", str(tmp_path), transport=transport, sleep=Sleeps()) as c:
        with pytest.raises(ClientError) as info:
            c.participate(ShiftTrainer(0.01), x, y, max_wait_s=5.0)
    # Assert: refused before any download; the app directory as it was
    assert info.value.reason == "bad_response" and "cap" in info.value.detail
    assert "/v1/tasks/1/model" not in seen
    assert _app_files(tmp_path) == files


def test_the_device_store_never_writes_pending_metadata_it_could_not_read_back(
    tmp_path: Path,
) -> None:
    # Prepare: an upload pending, then one whose layout's JSON is over the read cap
    from compression import ModelSpec
    from sdk.device_store import DeviceStoreError, PendingUpload

    files = _app_with_state(tmp_path)
    huge = ModelSpec.from_shapes([("w" * (1 << 20), (4, 8)), ("b", (4,))])
    store = DeviceStore(tmp_path)
    feedback = ErrorFeedback(SPEC.size)
    # Execute
    with pytest.raises(DeviceStoreError, match="not saved"):
        store.save_pending(PendingUpload(9, "k" * 32, b"frame", 0, huge), feedback)
    # Assert: nothing written; the earlier upload still loads
    assert _app_files(tmp_path) == files
    pending = DeviceStore(tmp_path).load_pending()
    assert pending is not None and pending.round_id == 4


# -- other statuses and bodies -----------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(204),
        httpx.Response(100),
        httpx.Response(302, headers={"location": "http://elsewhere/v1/checkin"}),
        httpx.Response(202, content=WAIT),
        httpx.Response(200),
        httpx.Response(200, content=b"<html>sign in to the wifi</html>"),
        httpx.Response(200, content=b"[" * 200_000),
        httpx.Response(200, content=b'{"action": "wait", "retry_after_s": 1, "x": '
                       + b"[" * 200_000 + b"]" * 200_000 + b"}"),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json={"action": 3, "retry_after_s": 1}),
    ],
    ids=["204", "100", "302", "202", "200-empty", "200-html", "200-deep", "200-deep-extra",
         "200-list", "200-types"],
)  # fmt: skip
def test_a_check_in_answer_that_is_not_one_is_a_bad_response(
    tmp_path: Path, response: httpx.Response
) -> None:
    # Prepare
    transport = httpx.MockTransport(lambda r: response)
    # Execute
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        with pytest.raises(ClientError) as info:
            c.check_in(1)
    # Assert: a reason and a sentence, never a parser's own exception
    assert info.value.reason == "bad_response" and info.value.detail


def test_an_error_body_nested_too_deeply_is_still_a_client_error(tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(409, content=b"[" * 200_000))
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        with pytest.raises(ClientError) as info:
            c.check_in(1)
    assert info.value.status == 409


def _refusal_of(reason_chars: int, detail_chars: int) -> httpx.Response:
    """A 409 whose JSON reason and detail are megabytes long."""
    body = json.dumps({"reason": "r" * reason_chars, "detail": "d" * detail_chars})
    return httpx.Response(409, content=body.encode())


def snapshot_answer(params: npt.NDArray[np.float32], version: int) -> httpx.Response:
    """A coordinator's 200 to a model download: `params` as an fp32 snapshot at `version`."""
    return httpx.Response(
        200,
        content=encode_snapshot(params, SPEC, dtype="fp32"),
        headers={
            Header.MODEL_ENCODING: ModelEncoding.SNAPSHOT,
            Header.MODEL_DIGEST: model_digest(params).hex(),
            Header.MODEL_VERSION: str(version),
        },
    )


def _cut(text: str, kept: int, sent: int) -> str:
    return text * kept + f"[... {sent - kept} more characters cut]"


def test_a_refusal_megabytes_long_is_cut_to_a_loggable_error(tmp_path: Path) -> None:
    # Prepare: a secure round whose setup (read under the 16 MiB cap) is refused with a 4 MiB
    # detail and a 1 MiB reason, after a correct model
    params = np.linspace(0, 1, SPEC.size, dtype=np.float32)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/tasks/1/model":
            return snapshot_answer(params, 0)
        return _refusal_of(1 << 20, 4 << 20)

    # A deadline ahead: one past ends the round at its model download (helper-68), unrefused
    a = dataclasses.replace(_assignment(), secure=True, deadline_unix=4e9)
    # Execute
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(ClientError) as info:
            c.secure_round(a, _zero_update)
    # Assert: 1,000 characters of detail and 64 of reason, each saying how much was cut
    err = info.value
    assert err.status == 409
    assert err.detail == _cut("d", 1000, 4 << 20)
    assert err.reason == _cut("r", 64, 1 << 20)
    assert len(str(err)) < 1200


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_check_in_refusal_megabytes_long_is_cut_by_both_clients(
    tmp_path: Path, kind: str
) -> None:
    # Prepare: as much reason and detail as the 4 MiB JSON cap lets through
    reason_chars, detail_chars = 1 << 20, (3 << 20) - 100
    transport = httpx.MockTransport(lambda r: _refusal_of(reason_chars, detail_chars))

    # Execute
    with pytest.raises(ClientError) as info:
        if kind == "sync":
            with Client("http://coord", str(tmp_path), transport=transport) as c:
                c.check_in(1)
        else:

            async def run() -> None:
                t = httpx.MockTransport(lambda r: _refusal_of(reason_chars, detail_chars))
                async with AsyncClient("http://coord", str(tmp_path), transport=t) as ac:
                    await ac.check_in(1)

            asyncio.run(run())
    # Assert
    assert info.value.detail == _cut("d", 1000, detail_chars)
    assert info.value.reason == _cut("r", 64, reason_chars)


def test_a_short_refusal_is_kept_whole(tmp_path: Path) -> None:
    # Prepare: exactly the longest detail and reason kept uncut
    transport = httpx.MockTransport(lambda r: _refusal_of(64, 1000))
    # Execute
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        with pytest.raises(ClientError) as info:
            c.check_in(1)
    # Assert
    assert info.value.detail == "d" * 1000 and info.value.reason == "r" * 64


def _zstd_bomb() -> bytes:
    """12 kB of zstd that inflates to 64 MiB of zeros (no content size in its header)."""
    import zstandard

    return zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    ("encoding", "body"), [("gzip", b"not gzip at all"), ("zstd", None), ("br", b"x")]
)
def test_a_body_with_a_content_encoding_is_refused_before_it_is_inflated(
    tmp_path: Path, kind: str, encoding: str, body: bytes | None
) -> None:
    # Prepare: an encoded body (streamed, as off a socket). The device asks for identity; it
    # used to inflate such a body a whole chunk at a time before any cap (a 12 kB zstd answer
    # became 64 MiB in memory, then `too_large`; a broken one raised httpx's DecodingError)
    headers = {"content-encoding": encoding}
    payload = _zstd_bomb() if body is None else body
    sent: list[httpx.Request] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield payload

    def respond(r: httpx.Request, content: Any) -> httpx.Response:
        sent.append(r)
        return httpx.Response(200, headers=headers, content=content)

    # Execute
    with pytest.raises(ClientError) as info:
        if kind == "sync":
            transport = httpx.MockTransport(lambda r: respond(r, iter([payload])))
            with Client("http://coord", str(tmp_path), transport=transport) as c:
                c.check_in(1)
        else:

            async def run() -> None:
                transport = httpx.MockTransport(lambda r: respond(r, chunks()))
                async with AsyncClient("http://coord", str(tmp_path), transport=transport) as c:
                    await c.check_in(1)

            asyncio.run(run())
    # Assert: refused for its encoding, which the device did not ask for
    assert info.value.reason == "bad_response"
    assert f"Content-Encoding {encoding!r}" in info.value.detail
    assert sent[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("value", ["²".encode(), "²".encode("latin-1"), b"9" * 5000, b"-3"])
def test_a_ledger_round_header_that_is_not_a_round_is_not_counted(
    tmp_path: Path, value: bytes
) -> None:
    # Prepare: "²".isdigit() is true, and int() refuses it; 5000 digits exceed int()'s limit
    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, headers=[(b"x-plume-ledger-round", value)], content=WAIT)
    )
    # Execute
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        answer = c.check_in(1)
        counted = dict(c.bandwidth)
    # Assert
    assert answer.action == "wait" and counted == {}


@pytest.mark.parametrize(("value", "refused"), [("²".encode(), False), (b"9" * 30, True)])
def test_a_content_length_header_that_is_no_length_is_never_a_crash(
    tmp_path: Path, value: bytes, refused: bool
) -> None:
    # Prepare: a streamed body (the declared length is not checked against it by the mock)
    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, headers=[(b"content-length", value)], content=iter([WAIT]))
    )
    # Execute
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        if refused:
            with pytest.raises(ClientError) as info:
                c.check_in(1)
            # Assert: 30 digits is past any cap
            assert info.value.reason == "too_large"
        else:
            # Assert: a length that is not one is ignored (the body is read under the cap)
            assert c.check_in(1).action == "wait"


class Trickle:
    """A body that never ends: one byte every 20 ms (each well inside any read timeout)."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            time.sleep(0.02)
            self.pulled += 1
            yield b" "

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.02)
            self.pulled += 1
            yield b" "


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_trickled_body_is_abandoned_after_max_response_s(tmp_path: Path, kind: str) -> None:
    # Prepare
    body = Trickle()
    start = time.monotonic()

    # Execute
    with pytest.raises(ClientError) as info:
        if kind == "sync":
            transport = httpx.MockTransport(lambda r: httpx.Response(200, content=iter(body)))
            with Client(
                "http://coord", str(tmp_path), transport=transport, max_response_s=0.3
            ) as c:
                c.check_in(1)
        else:

            async def run() -> None:
                transport = httpx.MockTransport(
                    lambda r: httpx.Response(200, content=body.__aiter__())
                )
                async with AsyncClient(
                    "http://coord", str(tmp_path), transport=transport, max_response_s=0.3
                ) as c:
                    await c.check_in(1)

            asyncio.run(run())

    # Assert: abandoned after about the budget, with a reason (not retried: no answer came)
    assert info.value.reason == "too_slow" and "0.3 s" in info.value.detail
    assert time.monotonic() - start < 5.0 and body.pulled < 100


def test_async_headers_that_never_come_are_abandoned_after_max_response_s(tmp_path: Path) -> None:
    # Prepare: a server that accepts the request and never answers
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def run() -> None:
        transport = httpx.MockTransport(handler)
        async with AsyncClient(
            "http://coord", str(tmp_path), transport=transport, max_response_s=0.2
        ) as c:
            await c.check_in(1)

    start = time.monotonic()
    # Execute + Assert
    with pytest.raises(ClientError) as info:
        asyncio.run(run())
    assert info.value.reason == "too_slow" and time.monotonic() - start < 5.0


# -- registration --------------------------------------------------------------------------------


@pytest.mark.parametrize("device_id", ["0" * 32, "x" * (2 << 20)])
def test_a_registration_answer_for_another_device_is_refused_and_not_stored(
    tmp_path: Path, device_id: str
) -> None:
    # Prepare: the answer names another id; a 2 MiB one would pass state.json's 1 MiB read cap
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/devices":
            return httpx.Response(200, json={"device_id": device_id, "created": True})
        return httpx.Response(200, content=WAIT)

    # Execute
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(ClientError) as info:
            c.register()
        answer = c.check_in(1)  # reads state.json
    # Assert: nothing about the device was written, and it still works
    assert info.value.reason == "bad_response" and "device id" in info.value.detail
    assert answer.action == "wait" and DeviceStore(tmp_path).state() == {}


# -- model downloads -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version", [None, b"-7", b"9" * 30, b"9223372036854775808", b" 3", "٣".encode(), "²".encode()]
)
def test_a_model_version_header_outside_0_to_2_63_is_refused_and_not_stored(
    tmp_path: Path, version: bytes | None
) -> None:
    # Prepare: a device holding version 3; a correct snapshot (digest included) whose version
    # header is missing, negative, too large or in non-ASCII digits ("٣" is int() 3)
    files = _app_with_state(tmp_path)
    params = np.linspace(0, 1, SPEC.size, dtype=np.float32)
    headers = [
        (Header.MODEL_ENCODING.encode(), ModelEncoding.SNAPSHOT.encode()),
        (Header.MODEL_DIGEST.encode(), model_digest(params).hex().encode()),
    ]
    if version is not None:
        headers.append((Header.MODEL_VERSION.encode(), version))
    body = encode_snapshot(params, SPEC, dtype="fp32")
    transport = httpx.MockTransport(lambda r: httpx.Response(200, headers=headers, content=body))
    # Execute
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        with pytest.raises(ClientError) as info:
            c.fetch_current(1, SPEC)
    # Assert: the held model and its version are kept
    assert info.value.reason == "bad_response" and "model version" in info.value.detail
    assert _app_files(tmp_path) == files


def test_a_held_version_outside_0_to_2_63_is_not_offered(tmp_path: Path) -> None:
    # Prepare: an app directory from an SDK that saved version -1 when the header was missing
    store = DeviceStore(tmp_path)
    params = np.zeros(SPEC.size, np.float32)
    store.save_model(1, params, -1, model_digest(params).hex(), True)
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/v1/checkin":
            return httpx.Response(200, content=WAIT)
        return snapshot_answer(params, 4)

    # Execute
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        c.check_in(1)
        _, version, _ = c.fetch_current(1, SPEC)
    # Assert: neither the check-in nor the download named -1 (which the coordinator refuses);
    # the device asked for a snapshot and now holds a real version
    assert json.loads(sent[0].content) == {
        "task_id": 1,
        "max_model_bytes": 268435456,
        "features": ["error_feedback_off"],
    }
    assert "have" not in sent[1].url.params
    assert version == 4 and store.state()["model_version"] == 4


# -- uploads -------------------------------------------------------------------------------------


def _answers() -> list[tuple[str, Handler]]:
    """Upload answers that are not the upload's receipt (each call builds a fresh response)."""
    html = b"<html>sign in to the wifi</html>"
    closed = {"reason": "round_closed", "detail": "only a 4xx is a refusal"}
    return [
        ("200-html", lambda r: httpx.Response(200, content=html)),
        ("200-empty", lambda r: httpx.Response(200)),
        ("200-other-round", lambda r: httpx.Response(200, json={**RECEIPT, "round_id": 99})),
        ("200-not-accepted", lambda r: httpx.Response(200, json={**RECEIPT, "accepted": False})),
        ("204", lambda r: httpx.Response(204)),
        (
            "302-round-closed",
            lambda r: httpx.Response(302, headers={"location": "/x"}, json=closed),
        ),
        ("503-round-closed", lambda r: httpx.Response(503, json=closed)),
    ]


@pytest.mark.parametrize(("name", "handler"), _answers(), ids=[n for n, _ in _answers()])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_upload_answered_with_anything_but_its_receipt_stays_pending(
    tmp_path: Path, name: str, handler: Handler, kind: str
) -> None:
    # Prepare: an upload for round 4 waits in the app directory (a captive portal, a proxy or
    # a broken server answers instead of the coordinator)
    files = _app_with_state(tmp_path)
    pending = DeviceStore(tmp_path).load_pending()
    assert pending is not None

    # Execute
    with pytest.raises(ClientError) as info:
        if kind == "sync":
            transport = httpx.MockTransport(handler)
            with Client("http://coord", str(tmp_path), transport=transport, retries=0) as c:
                c.upload(pending)
        else:

            async def run() -> None:
                transport = httpx.MockTransport(handler)
                async with AsyncClient(
                    "http://coord", str(tmp_path), transport=transport, retries=0
                ) as c:
                    await c.upload(pending)

            asyncio.run(run())

    # Assert: nothing forgotten, nothing put back into the residual
    assert info.value.status in (200, 204, 302, 503)
    assert _app_files(tmp_path) == files

    # ...and the real receipt, later, settles it
    ok = httpx.MockTransport(lambda r: httpx.Response(200, json={**RECEIPT, "round_id": 4}))
    with Client("http://coord", str(tmp_path), transport=ok) as c:
        receipt = c.resume_pending()
    assert receipt is not None and receipt.round_id == 4
    assert DeviceStore(tmp_path).load_pending() is None


# -- secure rounds (a live coordinator; one device's network path is hostile) ----------------


# A secure stage times out only when a test steps the task's StageClock past this: the stages
# every device uploads close early, however slow the machine, and the one a silent device
# leaves open closes as soon as the test sees it hold what it will get (`SecureTask.expire`).
STAGE_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class SecureTask:
    """The `secure_task` fixture: the coordinator's url, the task, and the task's stage clock."""

    url: str
    task_id: int
    coordinator: Any
    clock: StageClock

    def expire(self, stage: Stage, uploads: int, silent: Sequence[threading.Thread] = ()) -> None:
        """Time out `stage` of the task's open round once it holds all it will get: every
        thread in `silent` (a device that will not upload it) has ended, and the round is at
        `stage` with `uploads` uploads of it. The coordinator's ticker then closes it with
        those, as at its timeout."""
        expire_stage(self.coordinator, self.task_id, self.clock, stage, uploads, silent)


@pytest.fixture()
def secure_task(tmp_path: Path) -> Iterator[SecureTask]:
    """A loopback coordinator with a secure task of three devices, its stages timed by a
    `StageClock` (set before any device checks in, so before the first round opens)."""
    from coordinator.service import ServerThread, ServiceConfig

    from .test_client_secure import ADMIN, _task

    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    served = ServerThread(cfg)
    with served as url:
        task = _task(rounds=2)
        task["secure"] = {"coord_fraction": 0.5, "stage_timeout_s": STAGE_TIMEOUT_S}
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}) as http:
            task_id = int(http.post("/v1/admin/tasks", json=task).json()["task_id"])
            snap = encode_snapshot(np.zeros(SPEC.size, np.float32), SPEC, "fp32")
            octet = {"content-type": "application/octet-stream"}
            assert http.put(f"/v1/admin/tasks/{task_id}/model", content=snap, headers=octet)
        coordinator = served.app.state.coordinator
        clock = StageClock()
        coordinator.runtimes[task_id].secure.registry.clock = clock
        yield SecureTask(url, task_id, coordinator, clock)


def _cohort(clients: list[Client], task_id: int) -> list[Assignment]:
    """Check the three devices in until each holds its assignment to the same secure round."""
    held: dict[int, Assignment] = {}
    for _ in range(500):
        for i, c in enumerate(clients):
            if i not in held:
                answer = c.check_in(task_id)
                if answer.assignment is not None:
                    held[i] = answer.assignment
        if len(held) == len(clients):
            break
        time.sleep(0.02)
    assert len(held) == len(clients) and all(a.secure for a in held.values())
    return [held[i] for i in range(len(clients))]


def _in_threads(
    fns: list[Callable[[], object]],
    meanwhile: Callable[[list[threading.Thread]], None] = lambda threads: None,
) -> list[object]:
    """Run each function in its own thread, and `meanwhile` (given the threads) while they
    run; what each function returned, or the exception it raised."""
    out: list[object] = [None] * len(fns)

    def run(i: int) -> None:
        try:
            out[i] = fns[i]()
        except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    try:
        meanwhile(threads)
    finally:
        for t in threads:
            t.join(60)
    return out


def _zero_update(params: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], int, float]:
    return np.full_like(params, 0.25), 1, 0.0


def test_a_secure_round_left_with_too_few_neighbours_ends_with_a_report(
    secure_task: SecureTask, tmp_path: Path
) -> None:
    # Prepare: three devices in a round; device 0 goes silent before sharing its keys, so the
    # others hold shares from one neighbour, below the threshold
    url, task_id = secure_task.url, secure_task.task_id
    clients = [Client(url, str(tmp_path / f"d{i}")) for i in range(3)]
    for c in clients:
        c.register()
    a = _cohort(clients, task_id)

    # Execute: the share-keys stage times out once it holds the other two devices' uploads
    out = _in_threads(
        [lambda: clients[0].secure_round(a[0], _zero_update, drop_at=Stage.SHARE_KEYS)]
        + [lambda i=i: clients[i].secure_round(a[i], _zero_update) for i in (1, 2)],
        lambda threads: secure_task.expire(Stage.SHARE_KEYS, 2, silent=threads[:1]),
    )

    # Assert: the round cannot complete, and the devices say so in a report (no exception);
    # none sent a masked input, so no residual moved, in memory or in the app directory
    for i in (1, 2):
        report = out[i]
        assert isinstance(report, SecureRoundReport), report
        assert not report.completed and report.detail
        assert Stage.MASKED_INPUT not in report.stages
        assert not np.any(clients[i]._core.secure_participant(SPEC.size, task_id).residual)
        assert DeviceStore(tmp_path / f"d{i}").load_residual(SPEC.size) is None
    for c in clients:
        c.close()


@pytest.mark.parametrize("failure", ["round_closed", "offline", "garbage", "other_round"])
def test_a_masked_input_without_a_receipt_keeps_its_record_unless_surely_not_taken(
    secure_task: SecureTask, tmp_path: Path, failure: str
) -> None:
    # Prepare: device 0 carries a residual of 0.5 everywhere; its network path answers the
    # masked-input upload itself (a refusal, a dropped connection, or a body that is no receipt)
    url, task_id = secure_task.url, secure_task.task_id
    carried = np.full(SPEC.size, 0.5, np.float32)
    ef = ErrorFeedback(SPEC.size)
    ef.residual = carried.copy()
    DeviceStore(tmp_path / "d0").save_residual(ef)

    def path(request: httpx.Request, nxt: Callable[[httpx.Request], httpx.Response]) -> Any:
        if request.method == "POST" and request.url.path.endswith("/masked-input"):
            if failure == "offline":
                raise httpx.ConnectError("the network went away")
            if failure == "garbage":
                return httpx.Response(200, content=b"<html>sign in</html>", request=request)
            if failure == "other_round":  # a receipt, but not for this round
                return httpx.Response(200, json={**RECEIPT, "round_id": 10**6}, request=request)
            closed = {"reason": "round_closed", "detail": "the deadline passed"}
            return httpx.Response(409, json=closed, request=request)
        return nxt(request)

    victim = Client(url, str(tmp_path / "d0"), mods=(path,), retries=0)
    clients = [victim, *(Client(url, str(tmp_path / f"d{i}")) for i in (1, 2))]
    for c in clients:
        c.register()
    a = _cohort(clients, task_id)

    # Execute: the masked-input stage times out once the victim is done and the stage holds
    # the other two devices' inputs
    out = _in_threads(
        [lambda i=i: clients[i].secure_round(a[i], _zero_update) for i in range(3)],
        lambda threads: secure_task.expire(Stage.MASKED_INPUT, 2, silent=threads[:1]),
    )

    # Assert: the victim stopped at the masked input (a report, or the error naming it)
    if failure == "round_closed":
        assert isinstance(out[0], SecureRoundReport) and not out[0].completed
        assert out[0].stages == ["advertise-keys", "share-keys"]
    elif failure == "offline":
        assert isinstance(out[0], httpx.ConnectError)
    else:
        assert isinstance(out[0], ClientError) and out[0].reason == "bad_response"
    residual = victim._core.secure_participant(SPEC.size, task_id).residual
    store = DeviceStore(tmp_path / "d0")
    stored = store.load_residual(SPEC.size)
    assert stored is not None
    np.testing.assert_array_equal(stored.residual, residual)  # in memory as on disk
    record = store.load_accepted()
    if failure in ("round_closed", "offline"):
        # Refused by a 4xx, or never sent: the residual is still the one it carried, for its
        # next round, and no record waits
        np.testing.assert_array_equal(residual, carried)
        assert record is None
    else:
        # A 200 that is no receipt may stand for an input the coordinator took (here it did
        # not: the mod answered), so the record waits for the check-in's `round_outcome`, as
        # a plain upload's does: the residual is the one the input left, and with the record
        # it holds the carried residual and the update (0.25) once. Before, the residual was
        # taken back at once, and a round that committed the input got its content again
        assert record is not None and record.round_id == a[0].round_id
        sent = UpdateCodec(record.spec, CodecConfig.dense()).decode(record.frame).to_dense()
        assert not np.allclose(residual, carried)
        np.testing.assert_allclose(residual + sent, carried + 0.25, atol=1e-6)
    for c in clients:
        c.close()


@pytest.mark.parametrize("retry_after", ["0", "nan", "-1", "inf"])
def test_polling_a_stage_that_never_closes_ends_within_max_stage_wait(
    secure_task: SecureTask, tmp_path: Path, retry_after: str
) -> None:
    # Prepare: device 0's stage downloads all answer 425 "still open", with a Retry-After
    # that is no wait, in a round whose deadline is never (1e308, a finite float)
    url, task_id = secure_task.url, secure_task.task_id
    sleeps = Sleeps(real=True)
    wait_s = 3.0  # max_stage_wait_s
    polls: list[float] = []

    def path(request: httpx.Request, nxt: Callable[[httpx.Request], httpx.Response]) -> Any:
        if request.method == "GET" and "/stages/" in request.url.path:
            polls.append(time.monotonic())
            still_open = {"reason": "invalid_state", "detail": "stage is still open"}
            headers = {"retry-after": retry_after}
            return httpx.Response(425, headers=headers, json=still_open, request=request)
        return nxt(request)

    victim = Client(url, str(tmp_path / "d0"), mods=(path,), sleep=sleeps, max_stage_wait_s=wait_s)
    clients = [victim, *(Client(url, str(tmp_path / f"d{i}")) for i in (1, 2))]
    for c in clients:
        c.register()
    a = _cohort(clients, task_id)
    forever = dataclasses.replace(a[0], deadline_unix=1e308)

    # Execute
    start = time.monotonic()
    report = victim.secure_round(forever, _zero_update)
    took = time.monotonic() - start

    # Assert: about max_stage_wait_s of polling, a wait time.sleep takes after every poll but
    # the last, none shorter than the floor (a "Retry-After: 0" must not make the device
    # spin), so at most one poll per 0.05 s of the wait: a count that a stall of the process
    # (a loaded machine) can only lower, where the sleeps' share of the time would shrink
    assert not report.completed and "did not close" in report.detail
    assert report.stages == ["advertise-keys"]
    assert 0.9 * wait_s <= took < wait_s + 9.0, (took, sum(sleeps))
    assert sum(sleeps) <= wait_s + 1e-9, (took, sum(sleeps))
    assert all(0 < s for s in sleeps[:-1]) and min(sleeps[:-1]) >= 0.05
    assert 2 <= len(polls) <= wait_s / 0.05 + 2, (len(polls), len(sleeps))
    assert len(sleeps) >= len(polls) - 1, (len(polls), len(sleeps))
    for c in clients:
        c.close()


# -- sdk.secure.HttpSecureDevice (the test device of the loopback stage router) --------------


def _http_device(handler: Handler) -> HttpSecureDevice:
    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://coordinator")
    device = HttpSecureDevice(client, "dev-0", SecureParticipant(100), max_response_bytes=4096)
    device.poll_s = 0.001
    return device


@pytest.mark.parametrize("retry_after", ["nan", "inf", "-inf"])
def test_the_http_secure_device_polls_past_a_retry_after_that_is_no_wait(retry_after: str) -> None:
    # Prepare: "still open" with a Retry-After time.sleep refuses, then the download
    answers = [
        httpx.Response(425, headers={"retry-after": retry_after}),
        httpx.Response(200, content=b"directory"),
    ]
    device = _http_device(lambda r: answers.pop(0))
    # Execute
    got = device.download(7, Stage.ADVERTISE_KEYS, timeout_s=5.0)
    # Assert
    assert got == b"directory"


def test_the_http_secure_device_reads_a_content_length_that_is_no_length_under_its_cap() -> None:
    # Prepare: "²".isdigit() is true and int() refuses it
    headers = [(b"content-length", "²".encode())]
    device = _http_device(lambda r: httpx.Response(200, headers=headers, content=iter([b"keys"])))
    # Execute + Assert
    assert device.download(7, Stage.ADVERTISE_KEYS, timeout_s=1.0) == b"keys"


def test_the_http_secure_device_refuses_an_error_body_nested_too_deeply_with_its_type() -> None:
    # Prepare
    headers = {"content-type": "application/json"}
    device = _http_device(lambda r: httpx.Response(409, headers=headers, content=b"[" * 3000))
    # Execute + Assert: a SecAggError naming the status, not the JSON parser's RecursionError
    with pytest.raises(SecAggError, match="HTTP 409"):
        device.upload(7, Stage.SHARE_KEYS, b"PSA1")


def test_a_wait_of_zero_seconds_does_not_make_participate_spin(tmp_path: Path) -> None:
    # Prepare: a coordinator that always answers "wait, 0 seconds"
    answer = b'{"action": "wait", "retry_after_s": 0}'
    seen: list[str] = []
    sleeps = Sleeps(real=True)
    transport = httpx.MockTransport(_check_in_server(answer, seen))
    x, y = _data()

    async def run_async() -> int:
        seen_async: list[str] = []
        t = httpx.MockTransport(_check_in_server(answer, seen_async))
        async with AsyncClient("http://coord", str(tmp_path / "b"), transport=t) as ac:
            assert await ac.participate(ShiftTrainer(0.01), x, y, max_wait_s=0.5) is None
        return len(seen_async)

    # Execute: half a second of participation, sync and async
    with Client("http://coord", str(tmp_path / "a"), transport=transport, sleep=sleeps) as c:
        assert c.participate(ShiftTrainer(0.01), x, y, max_wait_s=0.5) is None
    async_check_ins = asyncio.run(run_async())

    # Assert: every wait was at least 0.05 s, so half a second holds about 10 check-ins (it
    # was a busy loop of thousands)
    assert sleeps and min(sleeps) >= 0.05
    assert 1 <= len(seen) <= 12, len(seen)
    assert 1 <= async_check_ins <= 12, async_check_ins
