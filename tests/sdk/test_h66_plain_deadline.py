"""A plain round's model download and upload end by the round's deadline, when the check-in's
`Date` showed it against the coordinator's clock (plus ROUND_DEADLINE_SLACK_S).

The coordinator refuses a new upload past the deadline (409 `round_closed`; a re-send of one it
stored gets its receipt at any time), so retrying past it only holds the device. Before, these
requests had no deadline: a coordinator answering 503 held a device for retries x
(max_response_s + backoff). Now the round ends with `ClientError` `deadline_passed`, an upload
cut so staying pending (its idempotency key makes the re-send harmless). Without a usable `Date`
the device's clock alone would decide, and one running fast would give up uploads the
coordinator still takes: those rounds stay unbounded, as before. Real time, a scripted
coordinator (`SecureFake`'s model downloads behind `Stalling`), slack patched to 0.3 s."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path

import httpx
import numpy as np
import pytest

import sdk.client
from sdk import AsyncClient, Client
from sdk.client import ClientError, RoundReport
from sdk.device_store import DeviceStore

from .test_client import _assignment
from .test_client_secure import ShiftTrainer
from .test_h64_secure_deadline import LIMIT, SLACK_S, Stalling

SLACK = 0.3  # ROUND_DEADLINE_SLACK_S in these tests
LEDGER = "x-plume-ledger-round"


@pytest.fixture(autouse=True)
def _short_slack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk.client, "ROUND_DEADLINE_SLACK_S", SLACK)


class PlainCoordinator:
    """Check-ins assign plain round 101 of task 1 due `deadline_unix` (real clock), with the real
    clock's `Date` unless `dated` is False; model downloads and any request `method` to a path
    ending in `suffix` go to `Stalling` (503 for ever, then 404); other uploads get a receipt."""

    def __init__(
        self, deadline_unix: float, method: str = "GET", suffix: str = "/never", dated: bool = True
    ) -> None:
        self.stalling = Stalling(method, suffix)
        self.assignment = replace(
            _assignment(), round_id=101, upload_path="/v1/rounds/101/updates",
            deadline_unix=deadline_unix,
        )  # fmt: skip
        self.dated = dated
        self.uploads = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/checkin":
            body = {"action": "train", "retry_after_s": 0.0, "assignment": _json(self.assignment)}
            headers = {"date": formatdate(time.time(), usegmt=True)} if self.dated else {}
            return httpx.Response(200, content=json.dumps(body).encode(), headers=headers)
        if path == "/v1/rounds/101/updates" and not path.endswith(self.stalling.suffix):
            self.stalling.times.append(time.time())
            self.uploads += 1
            receipt = {
                "round_id": 101, "device_id": "0" * 32, "accepted": True, "duplicate": False,
                "payload_bytes": len(request.content), "reports": 1,
            }  # fmt: skip
            return httpx.Response(200, json=receipt, headers={LEDGER: "101"})
        return self.stalling(request)


def _json(a: object) -> object:
    from protocol.messages import to_json

    return to_json(a)


def _run(kind: str, handler: PlainCoordinator, root: Path, skew_s: float = 0.0) -> RoundReport:
    """Check in (task 1) and train the assigned plain round, the device's clock `skew_s` off."""
    x, y = np.zeros((4, 4), np.float32), np.zeros(4, np.int64)
    kw = {"retries": 1000, "backoff_s": 0.05, "clock": lambda: time.time() + skew_s}
    if kind == "sync":
        with Client("http://coord", str(root), transport=httpx.MockTransport(handler), **kw) as c:
            a = c.check_in(1).assignment
            assert a is not None
            return c.train_round(a, ShiftTrainer(0.01), x, y)

    async def go() -> RoundReport:
        async with AsyncClient(
            "http://coord", str(root), transport=httpx.MockTransport(handler), **kw
        ) as c:
            a = (await c.check_in(1)).assignment
            assert a is not None
            return await c.train_round(a, ShiftTrainer(0.01), x, y)

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_upload_answered_503_ends_by_the_deadline_and_stays_pending(
    tmp_path: Path, kind: str
) -> None:
    # Prepare: the round is due in 0.6 s; its upload is answered 503 for ever
    deadline = time.time() + 0.6
    handler = PlainCoordinator(deadline, "POST", "/updates")

    # Execute
    with pytest.raises(ClientError) as info:
        _run(kind, handler, tmp_path)

    # Assert: given up by the deadline plus the slack, the upload still pending. Before, the
    # retries went on (LIMIT 503s, then the handler's 404 raised not_found)
    assert info.value.reason == "deadline_passed", info.value
    assert "upload" in info.value.detail and "stays pending" in info.value.detail
    assert max(handler.stalling.times) <= deadline + SLACK + SLACK_S
    assert 0 < handler.stalling.stalled < LIMIT
    pending = DeviceStore(tmp_path).load_pending()
    assert pending is not None and pending.round_id == 101


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_model_download_answered_503_ends_by_the_deadline(tmp_path: Path, kind: str) -> None:
    # Prepare: the round is due in 0.6 s; its model download is answered 503 for ever
    deadline = time.time() + 0.6
    handler = PlainCoordinator(deadline, "GET", "/model")

    # Execute
    with pytest.raises(ClientError) as info:
        _run(kind, handler, tmp_path)

    # Assert: given up by the deadline plus the slack; nothing trained, encoded or sent
    assert info.value.reason == "deadline_passed", info.value
    assert "model download" in info.value.detail
    assert max(handler.stalling.times) <= deadline + SLACK + SLACK_S
    assert 0 < handler.stalling.stalled < LIMIT
    assert DeviceStore(tmp_path).load_pending() is None
    assert handler.uploads == 0


def test_a_round_past_its_deadline_sends_no_download(tmp_path: Path) -> None:
    handler = PlainCoordinator(time.time() - 1.0 - SLACK)
    with pytest.raises(ClientError) as info:
        _run("sync", handler, tmp_path)
    assert info.value.reason == "deadline_passed"
    assert handler.stalling.fake.seen == [] and handler.uploads == 0


def test_without_a_date_the_round_is_not_bounded(tmp_path: Path) -> None:
    # Prepare: the round's deadline passed already by every clock, but the answer carries no
    # Date: the device's clock alone is not trusted to cut a plain round. The model download
    # is answered 503 ten times, then 404
    handler = PlainCoordinator(time.time() - 1.0 - SLACK, "GET", "/model", dated=False)
    handler.stalling.stalled = LIMIT - 10

    # Execute
    with pytest.raises(ClientError) as info:
        _run("sync", handler, tmp_path)

    # Assert: retried as before (all ten 503s, then the 404 raised): unbounded, as before this
    # change (a control)
    assert info.value.status == 404
    assert handler.stalling.stalled == LIMIT + 1


@pytest.mark.parametrize("dated", [True, False])
@pytest.mark.parametrize("skew", [+120.0, -120.0])
def test_a_device_clock_minutes_off_completes_a_plain_round(
    tmp_path: Path, dated: bool, skew: float
) -> None:
    # A round due in 10 s (room for a loaded machine) completes whichever way the device's clock
    # is two minutes off (with a Date the deadline is the coordinator's; without one the round
    # is unbounded)
    handler = PlainCoordinator(time.time() + 10.0, dated=dated)
    report = _run("sync", handler, tmp_path, skew)
    assert report.receipt.accepted and handler.uploads == 1
    assert DeviceStore(tmp_path).load_pending() is None
