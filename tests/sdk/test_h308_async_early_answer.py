"""`AsyncClient` gets the coordinator's early answer to an upload, as `Client` does.

The coordinator may answer an upload before it has read the body: 413 `too_large` when the
declared length is over the round's cap, 503 `busy` with `Retry-After` when the upload budget
has no room for it; then it closes the connection, the rest of the body unread, so its kernel
resets the connection. `Client` writes the body on httpcore's own socket: its write fails, and
httpcore reads the answer the socket already holds. `AsyncClient` went through httpx's anyio
transport over an asyncio transport, which closes its socket as soon as a write fails, the
answer in it unread: httpx raised `ReadError`, and the client reported the coordinator
unreachable (413: `CoordinatorUnreachable` after its retries; 503 `busy`: retried on its own
backoff, `Retry-After` ignored), counting nothing of the refused attempt.

On a loopback coordinator (no relay: the device's connection is the one the coordinator
resets), both clients: an upload over the cap is refused 413 `too_large` at once, not retried,
counted in `control_bandwidth` by the bytes sent of it, over http and https (anyio's TLS stream
also refuses to read once a write failed); an upload that finds the upload budget held (a
raw-socket upload declaring all of it, as tests/sdk/test_h302_refused_upload_bytes does) is
refused 503 `busy`, sent again after the answer's `Retry-After` (2 s, plus up to 20 %),
accepted, and the refused attempt counted as control traffic by the bytes sent of it. And
h302's relay scenario, which held `Client` only, holds `AsyncClient` to the same bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import sdk.client as sdk_client
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import Assignment, from_json, request_wire_bytes, response_wire_bytes
from sdk import AsyncClient, Client, ClientError, CoordinatorUnreachable
from sdk.client import _BODY_PIECE_BYTES
from tests.coordinator.test_service_support import ADMIN
from tests.sdk import test_h302_refused_upload_bytes as h302
from tests.sdk.test_h102_cancel_write import _self_signed
from tests.sdk.test_h302_refused_upload_bytes import (
    PARAMS,
    PINNED,
    _cells,
    _hold_budget,
    _Noise,
    _released,
    _Setup,
    _started,
)

MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
UNKNOWN_ROUND = 999  # the coordinator caps an upload to a round it does not know at its JSON cap
_X, _Y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[_Setup]:
    """A loopback coordinator with a 1 MiB upload budget and a task of PARAMS parameters sent
    dense (~8 MB an upload); its listener's receive buffer pinned at PINNED."""
    with _started(tmp_path) as s:
        yield s


@dataclass
class _Upload:
    """One upload as the device saw it: its answers (status, wire bytes), every request
    it sent (method, target, wire bytes of the whole request), what control_bandwidth
    counted while it ran, the error or None, and the waits before retries."""

    answers: list[tuple[int, int]]
    requests: list[tuple[str, str, int]]
    control: dict[str, dict[str, int]]
    rounds: dict[int, dict[str, dict[str, int]]]
    err: ClientError | None
    pauses: list[float]
    frame: int


def _recorded(request: httpx.Request, response: httpx.Response, up: _Upload) -> None:
    target = request.url.raw_path.decode()
    whole = request_wire_bytes(request.method, target, request.headers.raw, len(request.content))
    up.requests.append((request.method, target, whole))
    down = response_wire_bytes(response.status_code, response.headers.raw, len(response.content))
    up.answers.append((response.status_code, down))


def _delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> Any:
    return {d: {k: v - before.get(d, {}).get(k, 0) for k, v in after[d].items()} for d in after}


def _oversized(url: str, root: Path, asynchronous: bool, verify: Any = True) -> _Upload:
    """Register, then upload a ~8 MB frame to a round the coordinator does not know (its cap:
    the 64 KiB JSON cap), retries=2, through httpx's own transport."""
    assignment = {
        "task_id": 1, "round_id": UNKNOWN_ROUND, "base_version": 0, "model_name": "m",
        "spec": [{"name": "w", "shape": [PARAMS]}], "codec": {"topk": 1.0, "bits": 32},
        "training": {}, "deadline_unix": 4102444800.0, "model_path": "/v1/tasks/1/model",
        "upload_path": f"/v1/rounds/{UNKNOWN_ROUND}/updates", "max_upload_bytes": 64 << 20,
        "seed": 0,
    }  # fmt: skip
    a = from_json(Assignment, assignment)
    params = np.zeros(PARAMS, np.float32)
    trained = params + np.random.default_rng(308).normal(0, 0.01, PARAMS).astype(np.float32)
    up = _Upload([], [], {}, {}, None, [], 0)

    if asynchronous:

        async def amod(request: httpx.Request, send: Any) -> httpx.Response:
            response: httpx.Response = await send(request)
            _recorded(request, response, up)
            return response

        async def go() -> None:
            async with AsyncClient(url, str(root), retries=2, mods=(amod,), verify=verify) as c:
                await c.register()
                before = _cells(c.control_bandwidth)
                pending = c.encode_update(a, params, trained, 8)
                up.frame = len(pending.frame)
                del up.requests[:], up.answers[:]
                try:
                    await c.upload(pending)
                except ClientError as err:
                    up.err = err
                up.control = _delta(_cells(c.control_bandwidth), before)

        asyncio.run(go())
        return up

    def mod(request: httpx.Request, send: Any) -> httpx.Response:
        response: httpx.Response = send(request)
        _recorded(request, response, up)
        return response

    with Client(url, str(root), retries=2, mods=(mod,), sleep=up.pauses.append, verify=verify) as c:
        c.register()
        before = _cells(c.control_bandwidth)
        pending = c.encode_update(a, params, trained, 8)
        up.frame = len(pending.frame)
        del up.requests[:], up.answers[:]
        try:
            c.upload(pending)
        except ClientError as err:
            up.err = err
        up.control = _delta(_cells(c.control_bandwidth), before)
    return up


@MODES
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_an_upload_over_the_cap_is_refused_413_and_counted_by_what_was_sent(
    setup: _Setup, tmp_path: Path, asynchronous: bool, tls: bool
) -> None:
    # Prepare: over TLS, a coordinator of its own with a certificate for 127.0.0.1 (before,
    # AsyncClient over TLS: ReadError too, anyio's TLS stream refusing to read once a write
    # had failed)
    with contextlib.ExitStack() as stack:
        url, verify = setup.server.url, True
        if tls:
            cert, key = _self_signed(tmp_path)
            cfg = ServiceConfig(db_path=str(tmp_path / "tls.db"), admin_token=ADMIN)
            server = ServerThread(cfg, tls_cert=cert, tls_key=key)
            server.start()
            stack.callback(server.stop)
            url, verify = server.url, cert
            assert url.startswith("https://")

        # Execute: an ~8 MB upload the coordinator refuses by its declared length
        up = _oversized(url, tmp_path / "dev", asynchronous, verify)

    # Assert: the coordinator's 413 and its reason, once (a 4xx is not retried), not an outage
    # (before, AsyncClient: CoordinatorUnreachable 'lost the connection ... in 3 attempts:
    # ReadError', control_bandwidth counting nothing)
    err = up.err
    assert isinstance(err, ClientError) and not isinstance(err, CoordinatorUnreachable), err
    assert (err.status, err.reason) == (413, "too_large"), err
    assert "65536-byte cap" in err.detail
    assert [status for status, _ in up.answers] == [413]
    # counted as control traffic: the answer exactly, of the request what was handed to the
    # socket, which is at least the head and less than the whole (~8 MB) request
    (method, target, whole), = up.requests  # fmt: skip
    assert (method, target) == ("POST", f"/v1/rounds/{UNKNOWN_ROUND}/updates")
    assert up.frame > 4 * PINNED
    head = whole - up.frame
    counted = up.control
    assert counted["up"]["requests"] == counted["down"]["requests"] == 1
    assert counted["down"]["wire_bytes"] == up.answers[0][1]
    assert head <= counted["up"]["wire_bytes"] < whole
    assert (counted["up"]["wire_bytes"] - head) % _BODY_PIECE_BYTES == 0  # whole pieces
    assert counted["up"]["payload_bytes"] == counted["up"]["dense_bytes"] == 0
    assert up.pauses == []


def _busy_then_accepted(s: _Setup, root: Path, asynchronous: bool, monkeypatch: Any) -> _Upload:
    """Register, check in until assigned, hold the upload budget with a raw-socket upload, and
    run the round (retries=1) through an injected httpx transport whose sockets' send buffer is
    pinned: the upload is refused 503 busy; the wait before the retry lets the budget go and
    records its length; the retry is accepted."""
    up = _Upload([], [], {}, {}, None, [], 0)
    opts = [(socket.SOL_SOCKET, socket.SO_SNDBUF, PINNED)]
    staller: list[socket.socket] = []

    def uploads(request: httpx.Request) -> bool:
        return request.url.path.endswith("/updates")

    if asynchronous:

        async def amod(request: httpx.Request, send: Any) -> httpx.Response:
            response: httpx.Response = await send(request)
            if uploads(request):
                _recorded(request, response, up)
            return response

        async def apause(seconds: float) -> None:
            up.pauses.append(seconds)
            for sock in staller:
                sock.close()
            while not _released(s.server):
                await asyncio.sleep(0.01)

        async def go() -> None:
            transport = httpx.AsyncHTTPTransport(socket_options=opts)
            async with AsyncClient(
                s.server.url, str(root), retries=1, transport=transport, mods=(amod,)
            ) as c:
                await c.register()
                while (a := (await c.check_in(s.task_id)).assignment) is None:
                    await asyncio.sleep(0.05)
                staller.append(_hold_budget(s.server, a.round_id))
                monkeypatch.setattr(sdk_client, "_apause", apause)
                before = _cells(c.control_bandwidth)
                try:
                    report = await c.train_round(a, _Noise(), _X, _Y)
                except ClientError as err:
                    up.err = err
                else:
                    up.frame = report.receipt.payload_bytes
                up.control = _delta(_cells(c.control_bandwidth), before)
                up.rounds = {r: _cells(row) for r, row in c.bandwidth.items()}

        asyncio.run(go())
        return up

    def mod(request: httpx.Request, send: Any) -> httpx.Response:
        response: httpx.Response = send(request)
        if uploads(request):
            _recorded(request, response, up)
        return response

    def pause(seconds: float) -> None:
        up.pauses.append(seconds)
        for sock in staller:
            sock.close()
        while not _released(s.server):
            time.sleep(0.01)

    transport = httpx.HTTPTransport(socket_options=opts)
    with Client(
        s.server.url, str(root), retries=1, transport=transport, mods=(mod,), sleep=pause
    ) as c:
        c.register()
        while (a := c.check_in(s.task_id).assignment) is None:
            time.sleep(0.05)
        staller.append(_hold_budget(s.server, a.round_id))
        before = _cells(c.control_bandwidth)
        try:
            up.frame = c.train_round(a, _Noise(), _X, _Y).receipt.payload_bytes
        except ClientError as err:
            up.err = err
        up.control = _delta(_cells(c.control_bandwidth), before)
        up.rounds = {r: _cells(row) for r, row in c.bandwidth.items()}
    return up


@MODES
def test_an_upload_refused_503_busy_is_sent_again_after_its_retry_after(
    setup: _Setup, tmp_path: Path, asynchronous: bool, monkeypatch: Any
) -> None:
    # Execute
    up = _busy_then_accepted(setup, tmp_path / "dev", asynchronous, monkeypatch)

    # Assert: 503 busy, then the same upload again after the answer's Retry-After (2 s and
    # up to 20 % more), accepted (before, AsyncClient: ReadError, a wait of its own backoff,
    # 0.1 to 0.2 s, and the budget still held at the retry had it come sooner)
    assert up.err is None, up.err
    assert [status for status, _ in up.answers] == [503, 200], (up.answers, up.pauses)
    assert len(up.pauses) == 1 and 2.0 <= up.pauses[0] <= 2.4, up.pauses
    # the refused attempt is control traffic: its answer exactly, and of the request what
    # was handed to the socket: at least a piece of the body, less than all of it
    (_, _, whole), (_, _, again) = up.requests
    assert whole == again
    head = whole - up.frame
    assert up.frame > 4 * PINNED
    counted = up.control
    assert counted["up"]["requests"] == counted["down"]["requests"] == 1
    assert counted["down"]["wire_bytes"] == up.answers[0][1]
    assert head + _BODY_PIECE_BYTES <= counted["up"]["wire_bytes"] < whole
    assert counted["up"]["payload_bytes"] == counted["up"]["dense_bytes"] == 0
    # the accepted upload counts whole in its round, with its payload
    ((_, row),) = up.rounds.items()
    assert row["up"]["payload_bytes"] == up.frame
    assert row["up"]["wire_bytes"] >= whole


def _run_async(s: _Setup, root: Path) -> h302._Seen:
    """h302's `_run` with an AsyncClient: through the counting relay, the upload refused 503
    busy (no retry) while the staller holds the budget, then re-sent once it is gone."""
    opts = [(socket.SOL_SOCKET, socket.SO_SNDBUF, PINNED)]

    async def go() -> h302._Seen:
        transport = httpx.AsyncHTTPTransport(socket_options=opts)
        async with AsyncClient(s.relay.url, str(root), retries=0, transport=transport) as c:
            await c.register()
            while (a := (await c.check_in(s.task_id)).assignment) is None:
                await asyncio.sleep(0.05)
            staller = _hold_budget(s.server, a.round_id)
            before = _cells(c.control_bandwidth)
            with pytest.raises(ClientError) as refused:
                await c.train_round(a, _Noise(), _X, _Y)
            after = _cells(c.control_bandwidth)
            pending = c._core.store.load_pending()
            assert pending is not None
            staller.close()
            h302._wait(lambda: _released(s.server), "the staller's budget given back")
            receipt = await c.resume_pending()
            assert receipt is not None
            return h302._Seen(
                before, after, _cells(c.control_bandwidth),
                {r: _cells(row) for r, row in c.bandwidth.items()}, refused.value,
                len(pending.frame), receipt.payload_bytes,
            )  # fmt: skip

    return asyncio.run(go())


def test_async_an_upload_refused_at_its_first_part_counts_as_h302_holds(
    setup: _Setup, tmp_path: Path, monkeypatch: Any
) -> None:
    # h302's loopback test (Client only there: AsyncClient lost the 503 once the relay reset
    # its connection, ReadError) run with AsyncClient: the same bounds against the relay's
    # count, within the two pinned buffers and a piece of what the relay read
    monkeypatch.setattr(h302, "_run", _run_async)
    h302.test_an_upload_refused_at_its_first_part_counts_what_was_sent_of_it(setup, tmp_path)
