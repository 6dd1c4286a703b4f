"""The training loss an upload sends (`?train_loss=`, when the assignment's `report_loss` asks)
is kept with the pending upload in the app directory (`PendingUpload.train_loss`, pending.json's
`train_loss`), so an upload re-sent after the app restarts carries the same signed query. Before,
the loss was kept in memory only and such a re-send carried none. A pending.json without the key
(an older SDK's, or an upload with no loss asked) still loads; one whose value is not a loss the
coordinator takes is re-sent without it, not lost."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import numpy as np
import pytest

from compression import ModelSpec
from coordinator.service import ServerThread, ServiceConfig
from protocol import auth
from protocol.messages import (
    Assignment,
    CodecParams,
    RoundStatus,
    TensorShape,
    TrainingParams,
    from_json,
)
from sdk import AsyncClient, Client, ClientError
from sdk.device_store import DeviceStore, PendingUpload
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    await_assignment,
    create_task,
    local_data,
    task_config,
    wait_until,
)

SPEC = ModelSpec.from_shapes([("w", (4, 8)), ("b", (4,))])
RECEIPT = {
    "round_id": 5,
    "device_id": "0" * 32,
    "accepted": True,
    "duplicate": False,
    "payload_bytes": 10,
    "reports": 1,
}
# The keys of pending.json an SDK before the loss was kept wrote (for a task with its layout).
OLD_KEYS = {"round_id", "key", "bytes", "dense_bytes", "sha256", "task_id", "spec"}


def _assignment(report_loss: bool | None = True) -> Assignment:
    return Assignment(
        task_id=1, round_id=5, base_version=0, model_name="m",
        spec=[TensorShape("w", [4, 8]), TensorShape("b", [4])],
        codec=CodecParams(topk=0.5, bits=8), training=TrainingParams(1, 4, 0.1),
        deadline_unix=0.0, model_path="/v1/tasks/1/model", upload_path="/v1/rounds/5/updates",
        max_upload_bytes=10_000, seed=0, report_loss=report_loss,
    )  # fmt: skip


class Recorder:
    """A mock coordinator: keeps every upload request; answers `fail_first` 503s, then 200."""

    def __init__(self, fail_first: int = 0) -> None:
        self.uploads: list[httpx.Request] = []
        self.fail_first = fail_first

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.uploads.append(request)
        if len(self.uploads) <= self.fail_first:
            return httpx.Response(503, headers={"retry-after": "0"}, json={"reason": "x"})
        return httpx.Response(200, json=RECEIPT)

    async def ahandle(self, request: httpx.Request) -> httpx.Response:
        return self.handle(request)

    def losses(self) -> list[list[str] | None]:
        """Each upload's `train_loss` values (None: the key absent)."""
        return [parse_qs(r.url.query.decode()).get("train_loss") for r in self.uploads]


def _signed_target(request: httpx.Request, public_key: bytes) -> bool:
    """Whether `request`'s signature covers its target as sent (query included)."""
    fields = auth.fields_from_headers({k.lower(): v for k, v in request.headers.items()})
    message = auth.signing_message(
        method=request.method,
        target=request.url.raw_path.decode(),
        device_id=fields.device_id,
        round_id=fields.round_id,
        body_hash=auth.body_sha256(request.content),
        timestamp_ms=fields.timestamp_ms,
        nonce=fields.nonce,
    )
    return auth.verify(public_key, message, fields.signature)


def _no_sleep(_: float) -> None:
    pass


def _left_pending(root: Path, loss: Any, report_loss: bool | None = True) -> Recorder:
    """Encode an update with `loss` and upload it against a coordinator that answers 503 to
    every attempt: it stays pending in `root`. The recorder of those attempts."""
    down = Recorder(fail_first=100)
    with Client(
        "http://coord", str(root), transport=httpx.MockTransport(down.handle), retries=1,
        backoff_s=0.0, sleep=_no_sleep,
    ) as client:  # fmt: skip
        zero = np.zeros(SPEC.size, np.float32)
        pending = client.encode_update(_assignment(report_loss), zero, zero + 0.1, 8, loss=loss)
        with pytest.raises(ClientError):  # the 503 that outlasts the retries
            client.upload(pending, SPEC)
    return down


def _resend(root: Path, asynchronous: bool = False) -> tuple[Recorder, bytes]:
    """The restarted app re-sends the pending upload to a coordinator that takes it."""
    up = Recorder()
    if asynchronous:

        async def go() -> bytes:
            async with AsyncClient(
                "http://coord", str(root), transport=httpx.MockTransport(up.ahandle)
            ) as client:
                receipt = await client.resume_pending()
                assert receipt is not None and receipt.accepted
                return client._core.public_key

        key = asyncio.run(go())
    else:
        with Client(
            "http://coord", str(root), transport=httpx.MockTransport(up.handle), sleep=_no_sleep
        ) as client:
            receipt = client.resume_pending()
            assert receipt is not None and receipt.accepted
            key = client._core.public_key
    return up, key


def _pending_json(root: Path) -> dict[str, Any]:
    meta = json.loads((root / "pending.json").read_text())
    assert isinstance(meta, dict)
    return meta


@pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
def test_an_upload_re_sent_after_a_restart_carries_its_loss(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: the upload fails on every attempt (it stays pending), then the app restarts
    down = _left_pending(tmp_path, 0.6931471805599453)
    assert down.losses() == [["0.6931471805599453"]] * 2
    assert _pending_json(tmp_path)["train_loss"] == "0.6931471805599453"
    # Execute: the restarted app re-sends it
    up, key = _resend(tmp_path, asynchronous)
    # Assert: the same query as before the restart, under the re-send's own signature; the
    # upload is no longer pending
    assert up.losses() == [["0.6931471805599453"]]
    assert _signed_target(up.uploads[0], key)
    assert up.uploads[0].headers["idempotency-key"] == down.uploads[0].headers["idempotency-key"]
    assert DeviceStore(tmp_path).load_pending() is None


@pytest.mark.parametrize(
    "report_loss, loss", [(None, 0.5), (False, 0.5), (True, math.nan), (True, -1.0)]
)
def test_an_upload_with_no_loss_keeps_the_file_an_older_sdk_wrote(
    tmp_path: Path, report_loss: bool | None, loss: float
) -> None:
    # Prepare + Execute: no loss asked for, or none to send
    down = _left_pending(tmp_path, loss, report_loss)
    # Assert: pending.json has no train_loss key (an older SDK's keys, the sender and the check,
    # which an older SDK does not read), and the re-send after a restart sends no query
    assert set(_pending_json(tmp_path)) == OLD_KEYS | {"device_id", "check"}
    assert down.losses() == [None, None]
    up, _ = _resend(tmp_path)
    assert up.losses() == [None]


def test_an_older_sdks_pending_upload_loads_and_is_re_sent_without_a_loss(tmp_path: Path) -> None:
    # Prepare: an upload pending with a loss, whose pending.json an older SDK wrote (no key)
    _left_pending(tmp_path, 0.5)
    meta = _pending_json(tmp_path)
    del meta["train_loss"], meta["check"]
    (tmp_path / "pending.json").write_text(json.dumps(meta))
    # Execute
    with DeviceStore(tmp_path) as store:
        pending = store.load_pending()
    up, _ = _resend(tmp_path)
    # Assert
    assert pending is not None and pending.train_loss is None
    assert up.losses() == [None]


@pytest.mark.parametrize("stored", ["nan", "-0.5", "1e999", "2e6", "0x10", "1" * 33, 0.5, None])
def test_a_damaged_stored_loss_is_dropped_and_the_upload_still_re_sent(
    tmp_path: Path, stored: Any
) -> None:
    # Prepare: pending.json's train_loss is not a loss the coordinator takes (it would refuse
    # the upload with 422), in a file with no check (an older SDK's; with one, the change is
    # refused: test_s43_pending_check)
    _left_pending(tmp_path, 0.5)
    meta = _pending_json(tmp_path)
    del meta["check"]
    meta["train_loss"] = stored
    (tmp_path / "pending.json").write_text(json.dumps(meta))
    # Execute
    with DeviceStore(tmp_path) as store:
        pending = store.load_pending()
    up, _ = _resend(tmp_path)
    # Assert: it loads without the loss, and the re-send is accepted without a query
    assert pending is not None and pending.train_loss is None
    assert up.losses() == [None]


@pytest.mark.parametrize("bad", ["nan", "1e999", "-1", "0.5 ", "1" * 33, 0.5])
def test_saving_a_loss_the_coordinator_refuses_is_a_value_error_and_writes_nothing(
    tmp_path: Path, bad: Any
) -> None:
    # Prepare
    from compression import ErrorFeedback

    pending = PendingUpload(5, "k" * 32, b"frame", 160, SPEC, 1, True, bad)
    # Execute + Assert
    with DeviceStore(tmp_path) as store:
        with pytest.raises(ValueError, match="train_loss"):
            store.save_pending(pending, ErrorFeedback(SPEC.size))
        assert store.load_pending() is None
    assert not (tmp_path / "pending.json").exists()
    assert not (tmp_path / "pending.frame").exists()


def test_an_apps_own_pending_upload_with_a_bad_loss_is_refused_before_it_is_sent(
    tmp_path: Path,
) -> None:
    # Prepare: an app builds its own PendingUpload (not through encode_update)
    recorder = Recorder()
    pending = PendingUpload(5, "k" * 32, b"frame", 160, SPEC, 1, True, "nan")
    with Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(recorder.handle)
    ) as client:
        # Execute + Assert: a ValueError naming the field, and no request
        with pytest.raises(ValueError, match="train_loss"):
            client.upload(pending, SPEC)
    assert recorder.uploads == []


# -- against a loopback coordinator -------------------------------------------------------------


def test_the_round_figures_take_the_loss_of_an_upload_re_sent_after_a_restart(
    tmp_path: Path,
) -> None:
    # Prepare: one device of a one-device round; its upload's every attempt is answered 503 by
    # a proxy (the device's mod) so that it stays pending, then the app restarts
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    sent: list[str] = []

    def proxy_down(request: httpx.Request, nxt: Any) -> httpx.Response:
        if request.url.path.endswith("/updates"):
            sent.append(request.url.raw_path.decode())
            return httpx.Response(503, json={"reason": "busy", "detail": "proxy"})
        response: httpx.Response = nxt(request)
        return response

    def proxy_up(request: httpx.Request, nxt: Any) -> httpx.Response:
        if request.url.path.endswith("/updates"):
            sent.append(request.url.raw_path.decode())
        response: httpx.Response = nxt(request)
        return response

    with ServerThread(cfg) as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, task_config(rounds=1, clients_per_round=1))
            root = str(tmp_path / "dev")
            x, y = local_data(0)
            with Client(url, root, mods=(proxy_down,), retries=1, backoff_s=0.0) as client:
                client.register()
                a = await_assignment(client, task_id)
                assert a.report_loss is True
                with pytest.raises(ClientError):
                    client.train_round(a, SoftmaxTrainer(), x, y)
            with DeviceStore(root) as store:
                held = store.load_pending()
            assert held is not None and held.train_loss is not None
            loss = float(held.train_loss)
            # Execute: the restarted app re-sends it (participate re-sends a pending upload first)
            with Client(url, root, mods=(proxy_up,)) as again:
                assert again.resume_pending() is not None
            status = from_json(
                RoundStatus, wait_until(http, f"/v1/rounds/{a.round_id}", "state", "committed")
            )
    # Assert: every attempt, before and after the restart, sent the same loss, and the round's
    # figures are that loss
    assert math.isfinite(loss) and loss > 0
    assert sent == [f"/v1/rounds/{a.round_id}/updates?train_loss={loss!r}"] * 3
    meas = status.measurements
    assert meas["train_loss_reports"] == 1
    assert meas["train_loss_median"] == meas["train_loss_mean"] == loss
