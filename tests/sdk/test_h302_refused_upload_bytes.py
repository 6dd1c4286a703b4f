"""An upload the coordinator answers before reading its whole body is counted on the device by
the bytes it sent, not by its whole length (helper-296's byte-accounting review, finding A).

With `serve --upload-buffer-mb 1` and ~555 KB frames, an upload answered 503 `busy` after
393,216 B had crossed was counted by the SDK as the full request (`len(request.content)` in
`_Core.account`): the device's `control_bandwidth` said 1,113,378 B up where a counting proxy saw
950,904 B, and it added the refused upload's payload and dense bytes, which delivered nothing.

On a loopback coordinator with a 1 MiB upload budget, a raw-socket upload holds all of it (it
declares 1 MiB and keeps pace), and one SDK device's ~7 MB upload is refused 503 `busy` at its
first part, through a byte-counting TCP relay that, as a TCP peer does, resets the device's side
of a connection once the coordinator closes its side (the repo's
`tests/coordinator/wire_relay.ByteRelay` keeps it open, so the device's write of the rest would
only block). The device's send buffer and the relay's receive buffer are pinned, so what the
device handed to its kernel can exceed what the relay read by at most those two buffers. Then
the staller goes away and the device's re-send of the same upload, read in full, counts in the
round exactly as the relay saw it. `Client` here; tests/sdk/test_h308_async_early_answer.py
runs the same scenario with `AsyncClient`, which (since 47b181c) keeps an answer that arrives
while it still writes (before, httpx over anyio lost it once the connection was reset:
`ReadError`, retried as an outage, counted nowhere). The counting itself is the same code for
both: held, for both, against a transport that takes the body piece by piece as httpcore does
and answers part-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import ModelSpec, encode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from protocol import auth
from protocol.messages import (
    Assignment,
    CodecParams,
    TaskConfig,
    TensorShape,
    from_json,
    request_wire_bytes,
    to_json,
)
from sdk import AsyncClient, Client, ClientError, TrainResult
from sdk.client import _BODY_PIECE_BYTES
from tests.coordinator.test_service_hardening import _register
from tests.coordinator.test_service_support import ADMIN, signed_headers
from tests.coordinator.wire_relay import exchanges

MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
PARAMS = 2_000_000  # a dense fp32 upload of ~7 MB
BUDGET = 1 << 20  # serve --upload-buffer-mb 1
PINNED = 64 << 10  # SO_SNDBUF of the device's socket, SO_RCVBUF of the relay's side of it
AUTH = {"authorization": f"Bearer {ADMIN}"}


def _effective(option: int, size: int) -> int:
    """The buffer size the kernel gives a socket asked for `size` (Linux doubles it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, option, size)
        return int(s.getsockopt(socket.SOL_SOCKET, option))


@dataclass
class _Conn:
    up: bytearray = field(default_factory=bytearray)
    down: bytearray = field(default_factory=bytearray)


class _ClosingRelay:
    """A byte-counting TCP relay to `upstream` that resets the device's side of a connection
    once the coordinator's side has ended and its bytes were passed on (as a direct connection
    does: the coordinator's close, with the device's bytes unread, resets it). Its listening
    socket has a small SO_RCVBUF (PINNED), which accepted sockets inherit, and its upstream
    sockets a small SO_SNDBUF."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PINNED)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket()
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PINNED)
            upstream.connect(self._upstream)
            conn = _Conn()
            pair = (client, upstream)
            with self._lock:
                self.conns.append(conn)
                self._sockets += pair
            for src, dst, record in ((client, upstream, conn.up), (upstream, client, conn.down)):
                args = (src, dst, record, pair)
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        record: bytearray,
        pair: tuple[socket.socket, socket.socket],
    ) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    record += data
                dst.sendall(data)
        except OSError:
            pass
        client, upstream = pair
        if src is client:  # the device's side ended (or the coordinator's refused more bytes)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)  # pass the half-close on
            return
        # The coordinator's side ended, its answer passed on: reset the device's side (as the
        # coordinator's close does, bytes of the device left unread). Always a reset (linger
        # 0), not a close that resets only if the receive queue still holds bytes: the
        # `shutdown` below wakes the other pump, which may drain that queue before the close,
        # and after SHUT_RD the kernel sends no window update for what it drained, so a device
        # blocked on a zero window never learnt it opened. Its write hung to its timeout (CI,
        # stop 57: AsyncClient's upload 'timed out' after 30 s, not 503 busy)
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for s in pair:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def connections(self) -> list[tuple[bytes, bytes]]:
        with self._lock:
            return [(bytes(c.up), bytes(c.down)) for c in self.conns]

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()


class _Noise:
    """A trainer: the model plus seeded noise, so the dense upload does not compress away."""

    def train(self, params: Any, x: Any, y: Any, **_: Any) -> TrainResult:
        rng = np.random.default_rng(302)
        return TrainResult(params + rng.normal(0, 0.01, params.size).astype(np.float32), 8, 0.5)


@dataclass
class _Setup:
    server: ServerThread
    relay: _ClosingRelay
    task_id: int


@contextlib.contextmanager
def _started(root: Path) -> Iterator[_Setup]:
    """A coordinator with a 1 MiB upload budget, a task of PARAMS parameters sent dense, and
    the relay in front of it."""
    cfg = ServiceConfig(
        db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02,
        upload_buffer_bytes=BUDGET, body_timeout_s=600.0,
    )  # fmt: skip
    server = ServerThread(cfg)
    server.start()
    # The coordinator's receive buffer too (accepted sockets inherit the listener's): what the
    # relay can pass on while the coordinator does not read stays well below the body
    listener = server.server.servers[0].sockets[0]
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PINNED)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as admin:
            task = TaskConfig(
                name="big", model_name="big", spec=[TensorShape("w", [PARAMS])], rounds=1,
                clients_per_round=1, min_reports=1, selection_timeout_s=0.3, deadline_s=120.0,
                codec=CodecParams(topk=1.0, bits=32),
            )  # fmt: skip
            r = admin.post("/v1/admin/tasks", json=to_json(task), headers=AUTH)
            assert r.status_code == 201, r.text
            task_id = int(r.json()["task_id"])
            spec = ModelSpec.from_shapes([("w", (PARAMS,))])
            snap = encode_snapshot(np.zeros(PARAMS, np.float32), spec, "fp32")
            r = admin.put(
                f"/v1/admin/tasks/{task_id}/model", content=snap,
                headers={**AUTH, "content-type": "application/octet-stream"},
            )  # fmt: skip
            assert r.status_code == 200, r.text
        relay = _ClosingRelay(server.url)
        try:
            yield _Setup(server, relay, task_id)
        finally:
            relay.close()
    finally:
        server.stop()


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[_Setup]:
    with _started(tmp_path) as s:
        yield s


def _wait(condition: Any, what: str, timeout: float = 30.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.01)


def _hold_budget(server: ServerThread, round_id: int) -> socket.socket:
    """A registered device's upload to `round_id` that declares the whole budget, sends 128 KiB
    and stalls (on pace: the body timeout is 600 s), sent straight to the coordinator; returns
    once the budget holds it. Closing the socket gives the budget back."""
    key = auth.generate_private_key()
    with httpx.Client(base_url=server.url) as http:
        assert _register(http, key).status_code == 200
    target = f"/v1/rounds/{round_id}/updates"
    headers = {
        **signed_headers(key, "POST", target, round_id, bytes(BUDGET)),
        "content-type": "application/octet-stream",
        "idempotency-key": uuid.uuid4().hex,
        "content-length": str(BUDGET),
    }
    host, _, port = server.url.removeprefix("http://").rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = f"POST {target} HTTP/1.1\r\nhost: {host}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + bytes(128 << 10))
    budget = server.app.state.verifier.body_budget
    _wait(lambda: budget.held + budget.reserved >= BUDGET, "the staller's reservation")
    return sock


def _released(server: ServerThread) -> bool:
    budget = server.app.state.verifier.body_budget
    return bool(budget.held + budget.reserved == 0)


def _cells(row: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {d: dict(cell) for d, cell in row.items()}


@dataclass
class _Seen:
    """What the device counted around its refused upload, and after its re-send."""

    before: dict[str, dict[str, int]]  # control_bandwidth before the refused upload
    after: dict[str, dict[str, int]]  # ... after it
    control: dict[str, dict[str, int]]  # ... at the end
    rounds: dict[int, dict[str, dict[str, int]]]  # bandwidth at the end
    refused: ClientError
    frame: int  # the upload's body length
    receipt_payload: int


def _run(s: _Setup, root: Path) -> _Seen:
    """Register, check in until assigned, train; the upload is refused 503 busy (no retry)
    while the staller holds the budget; the staller goes; the upload is re-sent."""
    transport = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF, PINNED)])
    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    with Client(s.relay.url, str(root), retries=0, transport=transport) as c:
        c.register()
        while (a := c.check_in(s.task_id).assignment) is None:
            time.sleep(0.05)
        staller = _hold_budget(s.server, a.round_id)
        before = _cells(c.control_bandwidth)
        with pytest.raises(ClientError) as refused:
            c.train_round(a, _Noise(), x, y)
        after = _cells(c.control_bandwidth)
        pending = c._core.store.load_pending()
        assert pending is not None
        staller.close()
        _wait(lambda: _released(s.server), "the staller's budget given back")
        receipt = c.resume_pending()
        assert receipt is not None
        return _Seen(
            before, after, _cells(c.control_bandwidth),
            {r: _cells(row) for r, row in c.bandwidth.items()}, refused.value,
            len(pending.frame), receipt.payload_bytes,
        )  # fmt: skip


def _relayed(relay: _ClosingRelay) -> tuple[list[int], dict[int, list[int]], Any]:
    """The relay's count of the device's exchanges: control [up, down, requests] (the refused
    upload included), rounds {round: [up, down, requests]}, and the refused upload's exchange
    (the one whose connection ended inside its request)."""
    control, rounds, refused = [0, 0, 0], {}, None
    for up, down in relay.connections():
        for ex in exchanges(up, down):
            assert ex.response is not None
            rid = ex.response.header("x-plume-ledger-round")
            cell = control if rid is None else rounds.setdefault(int(rid), [0, 0, 0])
            cell[0] += ex.up
            cell[1] += ex.down
            cell[2] += 1
            if not ex.request.headers:  # cut inside its body: only its size and start line
                assert refused is None
                refused = ex
    return control, rounds, refused


def test_an_upload_refused_at_its_first_part_counts_what_was_sent_of_it(
    setup: _Setup, tmp_path: Path
) -> None:
    # Prepare: the slack between the device's count (bytes handed to its kernel) and the
    # relay's (bytes it read): the device's send buffer and the relay's receive buffer, and a
    # piece more (a buffer's accounting lets a write go past it). 131,072 to 262,144 B above in
    # 18 runs of `python -m tests.sdk.test_h302_refused_upload_bytes`
    slack = (
        _effective(socket.SO_SNDBUF, PINNED)
        + _effective(socket.SO_RCVBUF, PINNED)
        + _BODY_PIECE_BYTES
    )

    # Execute
    seen = _run(setup, tmp_path / "dev")

    # Assert: the upload was refused 503 busy; the relay saw only part of it
    assert (seen.refused.status, seen.refused.reason) == (503, "busy"), seen.refused
    control, rounds, refused = _relayed(setup.relay)
    assert refused is not None and refused.request.start.startswith("POST /v1/rounds/")
    assert refused.response is not None and refused.response.status == 503
    relayed_up = refused.up
    # the device counted the refusal in control_bandwidth: one request, its answer exactly,
    # and of the request what it sent: at most the buffers' slack above what the relay read,
    # at most one unfinished piece below it, and less than the whole body (before: the whole
    # request, head and ~7 MB body, and the frame's payload and dense bytes)
    counted = {
        d: {k: seen.after[d][k] - seen.before[d][k] for k in seen.after[d]} for d in seen.after
    }
    assert counted["up"]["requests"] == counted["down"]["requests"] == 1
    assert counted["down"]["wire_bytes"] == refused.down
    assert relayed_up - _BODY_PIECE_BYTES <= counted["up"]["wire_bytes"] <= relayed_up + slack
    assert counted["up"]["wire_bytes"] < seen.frame
    assert relayed_up + slack < seen.frame  # the check above is not vacuous
    assert counted["up"]["payload_bytes"] == counted["up"]["dense_bytes"] == 0
    assert seen.control["up"]["payload_bytes"] == seen.control["up"]["dense_bytes"] == 0
    # the re-send, read in full, counts in the round exactly as the relay saw it (payload: the
    # frame), and the rest of the control traffic too
    assert list(seen.rounds) == list(rounds) == [1]
    row = seen.rounds[1]
    assert [row["up"]["wire_bytes"], row["down"]["wire_bytes"], row["up"]["requests"]] == rounds[1]
    assert row["up"]["payload_bytes"] == seen.receipt_payload == seen.frame
    ctl = seen.control
    assert ctl["down"]["wire_bytes"] == control[1]
    assert ctl["up"]["requests"] == control[2]
    assert ctl["up"]["wire_bytes"] - counted["up"]["wire_bytes"] == control[0] - relayed_up


# -- the count itself, Client and AsyncClient, against a transport that answers part-way --------

SMALL = 200_000  # parameters: a dense frame of ~800 KB, 13 pieces
_ASSIGNMENT = {
    "task_id": 1, "round_id": 7, "base_version": 0, "model_name": "m",
    "spec": [{"name": "w", "shape": [SMALL]}], "codec": {"topk": 1.0, "bits": 32},
    "training": {}, "deadline_unix": 4102444800.0, "model_path": "/v1/tasks/1/model",
    "upload_path": "/v1/rounds/7/updates", "max_upload_bytes": 8 << 20, "seed": 0,
}  # fmt: skip


class _PartWay(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An upload's coordinator, taking the body as httpcore does (a piece is written before the
    next is asked for). `keep` pieces: it takes that many, fails to write the next (the peer
    closed) and answers 503 busy with `connection: close`, as httpcore passes on an answer
    that came before the body was all sent. None: it takes the whole body and answers 409
    `duplicate_upload` counted in round 7 (a refusal after reading, in the round's ledger).
    Keeps the wire bytes of the request with `keep` pieces of its body (`part_up`) and whole
    (`full_up`), and the body bytes it took (`taken`)."""

    def __init__(self, keep: int | None) -> None:
        self.keep = keep
        self.part_up = self.full_up = self.body = self.taken = 0

    def _answer(self, request: httpx.Request, taken: int) -> httpx.Response:
        target = request.url.raw_path.decode()
        self.body, self.taken = len(request.content), taken
        for attr, size in (
            ("part_up", (self.keep or 0) * _BODY_PIECE_BYTES),
            ("full_up", self.body),
        ):
            setattr(
                self, attr, request_wire_bytes(request.method, target, request.headers.raw, size)
            )
        if self.keep is None:
            body = {"reason": "duplicate_upload", "detail": "already have it"}
            return httpx.Response(409, json=body, headers={"x-plume-ledger-round": "7"})
        body = {"reason": "busy", "detail": "the upload budget is full"}
        return httpx.Response(503, json=body, headers={"connection": "close", "retry-after": "2"})

    def _take(self, piece: bytes, taken: list[int]) -> bool:
        """Write `piece`: False when it is the one that fails."""
        if self.keep is not None and taken[1] == self.keep:
            return False
        taken[0] += len(piece)
        taken[1] += 1
        return True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        taken = [0, 0]  # bytes, pieces
        assert isinstance(request.stream, httpx.SyncByteStream)
        for piece in request.stream:
            if not self._take(piece, taken):
                break
        return self._answer(request, taken[0])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        taken = [0, 0]
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for piece in request.stream:
            if not self._take(piece, taken):
                break
        return self._answer(request, taken[0])


def _upload_through(transport: Any, root: Path, asynchronous: bool) -> dict[str, Any]:
    """Encode an update for `_ASSIGNMENT` and upload it once (no retry) through `transport`;
    the client's counts afterwards."""
    a = from_json(Assignment, _ASSIGNMENT)
    params = np.zeros(SMALL, np.float32)
    trained = params + np.random.default_rng(302).normal(0, 0.01, SMALL).astype(np.float32)

    def counts(c: Any, err: BaseException | None) -> dict[str, Any]:
        return {"control": _cells(c.control_bandwidth), "rounds": dict(c.bandwidth), "err": err}

    if asynchronous:

        async def go() -> dict[str, Any]:
            async with AsyncClient("http://coord", str(root), transport=transport, retries=0) as c:
                pending = c.encode_update(a, params, trained, 8)
                try:
                    await c.upload(pending)
                except ClientError as err:
                    return counts(c, err)
                return counts(c, None)

        return asyncio.run(go())
    with Client("http://coord", str(root), transport=transport, retries=0) as c:
        pending = c.encode_update(a, params, trained, 8)
        try:
            c.upload(pending)
        except ClientError as err:
            return counts(c, err)
        return counts(c, None)


@MODES
def test_a_body_answered_part_way_counts_the_pieces_written(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: a transport that writes 3 pieces of the body, then meets the coordinator's
    # early 503 (the write of the 4th fails)
    transport = _PartWay(keep=3)

    # Execute
    seen = _upload_through(transport, tmp_path / "dev", asynchronous)

    # Assert: the 503 is control traffic, counted with its head and the 3 pieces written
    # (before: the whole body, and the frame's payload and dense bytes)
    err = seen["err"]
    assert isinstance(err, ClientError) and (err.status, err.reason) == (503, "busy")
    assert transport.body > 4 * _BODY_PIECE_BYTES
    up = seen["control"]["up"]
    assert up["wire_bytes"] == transport.part_up < transport.full_up
    assert transport.taken == 3 * _BODY_PIECE_BYTES
    assert up["requests"] == 1
    assert up["payload_bytes"] == up["dense_bytes"] == 0
    assert seen["rounds"] == {}


@MODES
def test_a_body_read_whole_and_refused_in_its_round_counts_whole_with_its_payload(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: a coordinator that reads the whole body and refuses it in round 7's ledger
    transport = _PartWay(keep=None)

    # Execute
    seen = _upload_through(transport, tmp_path / "dev", asynchronous)

    # Assert: round 7's row counts the whole request and the frame's payload and dense bytes
    # (as the coordinator's ledger does for an upload it read whole); nothing in control
    err = seen["err"]
    assert isinstance(err, ClientError) and err.reason == "duplicate_upload"
    up = seen["rounds"][7]["up"]
    assert up["wire_bytes"] == transport.full_up
    assert transport.taken == transport.body
    assert up["payload_bytes"] == transport.body
    assert up["dense_bytes"] == 4 * SMALL
    assert seen["control"]["up"]["requests"] == 0


@MODES
def test_a_transport_that_takes_the_content_whole_counts_the_whole_body(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: httpx's MockTransport reads `request.content`, never the counted pieces
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sizes.append(
            request_wire_bytes(
                request.method, request.url.raw_path.decode(), request.headers.raw,
                len(request.content),
            )
        )  # fmt: skip
        return httpx.Response(503, json={"reason": "busy", "detail": "busy"})

    # Execute
    seen = _upload_through(httpx.MockTransport(handler), tmp_path / "dev", asynchronous)

    # Assert: the whole request, as before
    assert seen["control"]["up"]["wire_bytes"] == sizes[0]
    assert len(sizes) == 1


def _figures(root: Path) -> tuple[int, int, int]:
    """One run of the loopback scenario: the upload's body length, the bytes of the refused
    request the relay read, and the bytes the device counted for it."""
    with _started(root) as s:
        seen = _run(s, root / "dev")
        refused = _relayed(s.relay)[2]
    assert refused is not None
    return seen.frame, refused.up, seen.after["up"]["wire_bytes"] - seen.before["up"]["wire_bytes"]


if __name__ == "__main__":
    # The figures docs/devices.md quotes: python -m tests.sdk.test_h302_refused_upload_bytes [runs]
    import sys
    import tempfile

    for run in range(int(sys.argv[1]) if len(sys.argv) > 1 else 6):
        with tempfile.TemporaryDirectory() as tmp:
            body, relayed, counted = _figures(Path(tmp))
        print(
            f"run {run + 1}: a {body:,} B body refused 503 busy at its first part; the relay "
            f"read {relayed:,} B of the request, the device counted {counted:,} B "
            f"({counted - relayed:+,} B)"
        )
