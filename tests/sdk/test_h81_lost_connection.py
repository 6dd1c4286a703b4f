"""A connection lost after the request went out (`httpx.RemoteProtocolError`: the server closed
a kept-alive connection without answering) counts as "maybe taken": the request is retried
as it was, and nothing is settled as refused. Checked to be safe rather than changed: a plain
upload's retry carries the same `Idempotency-Key` (the coordinator answers the second one as a
duplicate, counted once), and a masked input's retry the same body (the SecAgg router answers a
re-sent identical stage upload as a duplicate). If every attempt is lost, the plain upload stays
pending under its key and the masked input's record waits for the round's outcome: neither is
lost nor counted twice. These tests passed as written (no change to the client)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from protocol.names import Header
from sdk import Client
from sdk.device_store import DeviceStore

from .test_client import RECEIPT, SPEC, _assignment
from .test_client_deadlines import _answer, _read_request
from .test_h61_inflight import secure_task
from .test_h81_caller_participant import MASKED, ROUND, AtMaskedUpload

LOST = "Server disconnected without sending a response."


class Coordinator:
    """Plain uploads counted once per idempotency key; the first `lose` uploads are taken,
    then their connection is lost before the answer."""

    def __init__(self, lose: int) -> None:
        self.lose = lose
        self.keys: list[str] = []  # every attempt's key
        self.taken: dict[str, int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/v1/rounds/5/updates"
        key = request.headers[Header.IDEMPOTENCY_KEY]
        self.keys.append(key)
        duplicate = key in self.taken
        self.taken[key] = self.taken.get(key, 0) + (0 if duplicate else 1)
        if len(self.keys) <= self.lose:
            raise httpx.RemoteProtocolError(LOST)
        return httpx.Response(200, json={**RECEIPT, "duplicate": duplicate})


def _client(root: Path, coord: Any, retries: int) -> Client:
    transport = httpx.MockTransport(coord)
    return Client("http://coord", str(root), transport=transport, retries=retries, backoff_s=0)


def _pending(c: Client) -> Any:
    params = np.zeros(SPEC.size, np.float32)
    return c._core.encode(_assignment(), SPEC, params, params + 0.1, 8)


def test_a_lost_answer_is_retried_under_the_same_key_and_counted_once(tmp_path: Path) -> None:
    # Prepare
    coord = Coordinator(lose=1)
    with _client(tmp_path, coord, retries=2) as c:
        pending = _pending(c)
        # Execute
        receipt = c.upload(pending, SPEC)
    # Assert: one upload taken, the retry its duplicate, nothing left pending
    assert receipt.accepted and receipt.duplicate
    assert coord.keys == [pending.key, pending.key] and coord.taken == {pending.key: 1}
    assert DeviceStore(tmp_path).load_pending() is None


def test_every_answer_lost_keeps_the_upload_pending_under_its_key(tmp_path: Path) -> None:
    # Prepare: all three attempts are taken and their answers lost
    coord = Coordinator(lose=3)
    with _client(tmp_path, coord, retries=2) as c:
        pending = _pending(c)
        # Execute
        with pytest.raises(httpx.RemoteProtocolError):
            c.upload(pending, SPEC)
    # Assert: pending, with its key, not returned to the residual as refused
    held = DeviceStore(tmp_path).load_pending()
    assert held is not None and held.key == pending.key
    # Execute: a restarted app re-sends it
    with _client(tmp_path, coord, retries=0) as again:
        receipt = again.resume_pending()
    # Assert: the same key, counted once
    assert receipt is not None and receipt.duplicate
    assert set(coord.keys) == {pending.key} and coord.taken == {pending.key: 1}
    assert DeviceStore(tmp_path).load_pending() is None


class LostMaskedInput(AtMaskedUpload):
    """`SecureFake`, except that the first `lose` masked-input uploads lose their connection
    after the coordinator took them (the first) or not (a re-send it would answer `duplicate`)."""

    def __init__(self, lose: int) -> None:
        super().__init__(None)
        self.lose = lose
        self.receipt: httpx.Response | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith(MASKED):
            self.posts += 1
            if self.receipt is None:
                self.receipt = self.fake(request)  # taken by the SecAgg server, once
            if self.posts <= self.lose:
                raise httpx.RemoteProtocolError(LOST)
            return httpx.Response(200, json={**self.receipt.json(), "duplicate": True})
        return self.fake(request)


def _secure(root: Path, coord: LostMaskedInput, retries: int) -> Any:
    def update(params: Any) -> Any:
        return np.full(SPEC.size, 0.05, np.float32), 8, 0.25

    with _client(root, coord, retries) as c:
        return c.secure_round(secure_task(1, ROUND), update)


def test_a_lost_masked_input_answer_is_retried_and_the_round_completes(tmp_path: Path) -> None:
    # Prepare / Execute
    coord = LostMaskedInput(lose=1)
    report = _secure(tmp_path, coord, retries=2)
    # Assert: the round went on to unmask; the input's record waits for the round's outcome
    assert report.completed and report.receipt.duplicate and coord.posts == 2
    assert DeviceStore(tmp_path).load_accepted(ROUND) is not None


def test_every_masked_input_answer_lost_keeps_its_record(tmp_path: Path) -> None:
    # Prepare / Execute
    coord = LostMaskedInput(lose=3)
    with pytest.raises(httpx.RemoteProtocolError):
        _secure(tmp_path, coord, retries=2)
    # Assert: the coordinator may hold it: the record is kept for `round_outcome`, not
    # returned into the residual at once
    assert coord.posts == 3
    record = DeviceStore(tmp_path).load_accepted(ROUND)
    assert record is not None and record.task_id == 1


def test_a_reused_connection_closed_unanswered_is_a_remote_protocol_error(
    tmp_path: Path,
) -> None:
    # The real case: the server answers the first request on a kept-alive connection, reads
    # the second one and closes. httpx raises RemoteProtocolError, not a ConnectError (which
    # the client would take as never sent): the classification above is the one that happens.
    served: list[int] = []
    sock = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            for n in range(2):
                if not _read_request(conn):
                    return
                served.append(n)
                if n == 0:
                    conn.sendall(_answer("200 OK", b'{"action": "wait", "retry_after_s": 1.0}'))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with Client(url, str(tmp_path), retries=0) as c:
            assert c.check_in(1).action == "wait"
            with pytest.raises(httpx.RemoteProtocolError):
                c.check_in(1)
    finally:
        thread.join(5)
        sock.close()
    assert served == [0, 1]
