"""The SDK sends a round's mean training loss with its upload when the assignment asks
(`Assignment.report_loss`, a plain task without DP), and the coordinator's round figures are
those losses (helper-287).

Before, `RoundReport.loss` never left the device. Now the upload's signed target carries
`?train_loss=<repr of the loss>` when the assignment says `report_loss` and the loss is a finite
number in [0, 1e6]; a NaN (nothing trained) or out-of-range loss, an assignment without the key
(a task with DP, a secure task, a coordinator from before it) send none. An upload re-sent
after the app restarts sends the same loss (kept in pending.json since helper-293:
tests/sdk/test_h293_train_loss_restart.py).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import numpy as np
import numpy.typing as npt
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
from sdk import AsyncClient, Client, ClientError, TrainResult
from sdk.client import RoundReport
from sdk.device_store import DeviceStore

from ..coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    admin_get,
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


def _assignment(report_loss: bool | None = True) -> Assignment:
    return Assignment(
        task_id=1,
        round_id=5,
        base_version=0,
        model_name="m",
        spec=[TensorShape("w", [4, 8]), TensorShape("b", [4])],
        codec=CodecParams(topk=0.5, bits=8),
        training=TrainingParams(1, 4, 0.1),
        deadline_unix=0.0,
        model_path="/v1/tasks/1/model",
        upload_path="/v1/rounds/5/updates",
        max_upload_bytes=10_000,
        seed=0,
        report_loss=report_loss,
    )


class Recorder:
    """A mock coordinator: keeps every upload request; answers `fail_first` 503s, then 200."""

    def __init__(self, fail_first: int = 0) -> None:
        self.uploads: list[httpx.Request] = []
        self.fail_first = fail_first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.uploads.append(request)
        if len(self.uploads) <= self.fail_first:
            return httpx.Response(503, headers={"retry-after": "0"}, json={"reason": "x"})
        return httpx.Response(200, json=RECEIPT)

    def losses(self) -> list[list[str] | None]:
        """Each upload's `train_loss` values (None: the key absent)."""
        return [parse_qs(r.url.query.decode()).get("train_loss") for r in self.uploads]


def _client(root: Path, recorder: Recorder) -> Client:
    return Client(
        "http://coord",
        str(root),
        transport=httpx.MockTransport(recorder),
        backoff_s=0.0,
        sleep=lambda s: None,
    )


def _send(client: Client, a: Assignment, loss: Any) -> None:
    zero = np.zeros(SPEC.size, np.float32)
    pending = client.encode_update(a, zero, zero + 0.1, 8, loss=loss)
    assert client.upload(pending, SPEC).accepted


def _verifies(client: Client, request: httpx.Request) -> bool:
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
    return auth.verify(client._core.public_key, message, fields.signature)


def test_an_asked_for_loss_goes_in_the_signed_query_of_every_attempt(tmp_path: Path) -> None:
    # Prepare: the first two attempts get a 503
    recorder = Recorder(fail_first=2)
    client = _client(tmp_path, recorder)
    # Execute
    _send(client, _assignment(), 0.6931471805599453)
    # Assert: the same query on each attempt, under each attempt's signature
    assert recorder.losses() == [["0.6931471805599453"]] * 3
    assert all(_verifies(client, r) for r in recorder.uploads)
    assert len({r.headers["idempotency-key"] for r in recorder.uploads}) == 1
    assert client._core.store.load_pending() is None  # forgotten once accepted
    client.close()


@pytest.mark.parametrize(
    "report_loss, loss",
    [
        (None, 0.5),  # a task with DP, a secure task, or a coordinator before the key
        (False, 0.5),
        (True, math.nan),  # nothing trained
        (True, math.inf),
        (True, -0.5),
        (True, 1e6 * 1.000001),
        (True, None),
    ],
)
def test_no_loss_is_sent_unless_asked_and_in_range(
    tmp_path: Path, report_loss: bool | None, loss: Any
) -> None:
    # Prepare
    recorder = Recorder()
    client = _client(tmp_path, recorder)
    # Execute
    _send(client, _assignment(report_loss), loss)
    # Assert: no query at all
    assert recorder.losses() == [None]
    assert recorder.uploads[0].url.raw_path == b"/v1/rounds/5/updates"
    client.close()


def test_zero_and_the_bound_are_sent(tmp_path: Path) -> None:
    recorder = Recorder()
    client = _client(tmp_path, recorder)
    _send(client, _assignment(), -0.0)
    _send(client, _assignment(), 1e6)
    _send(client, _assignment(), np.float32(0.25))
    assert recorder.losses() == [["0.0"], ["1000000.0"], ["0.25"]]
    client.close()


def test_an_upload_re_sent_after_a_restart_carries_its_loss(tmp_path: Path) -> None:
    # Prepare: the upload fails on every attempt (it stays pending), then the app restarts
    down = Recorder(fail_first=100)
    client = Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(down), retries=1,
        backoff_s=0.0, sleep=lambda s: None,
    )  # fmt: skip
    zero = np.zeros(SPEC.size, np.float32)
    pending = client.encode_update(_assignment(), zero, zero + 0.1, 8, loss=0.5)
    with pytest.raises(ClientError, match=r"^503 x: .*\(after 2 attempts\)$") as caught:
        client.upload(pending, SPEC)  # the 503 that outlasts the retries
    assert caught.value.status == 503
    client.close()
    assert down.losses() == [["0.5"], ["0.5"]]
    # Execute: the restarted app re-sends it
    up = Recorder()
    again = _client(tmp_path, up)
    receipt = again.resume_pending()
    # Assert: accepted, with the same loss (kept with the pending upload in the app directory)
    assert receipt is not None and receipt.accepted
    assert up.losses() == [["0.5"]]
    assert DeviceStore(tmp_path).load_pending() is None
    again.close()


def test_each_pending_upload_carries_its_own_loss(tmp_path: Path) -> None:
    client = _client(tmp_path, Recorder())
    zero = np.zeros(SPEC.size, np.float32)
    pendings = [
        client.encode_update(_assignment(), zero, zero + 0.1, 8, loss=float(i)) for i in range(3)
    ]
    assert [p.train_loss for p in pendings] == ["0.0", "1.0", "2.0"]
    held = client._core.store.load_pending()  # the app directory holds the last one
    assert held is not None and held.key == pendings[-1].key and held.train_loss == "2.0"
    client.close()


# -- against the real coordinator on loopback -------------------------------------------------


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    with ServerThread(cfg) as url:
        yield url


class Uploads:
    """A client mod that keeps every upload request's target."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    def __call__(self, request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        if request.url.path.endswith("/updates"):
            self.targets.append(request.url.raw_path.decode())
        return nxt(request)


def _assign_all(clients: list[Client], task_id: int) -> list[Assignment]:
    out: dict[int, Assignment] = {}
    give_up = time.monotonic() + 30
    while len(out) < len(clients):
        for i, c in enumerate(clients):
            if i not in out and (a := c.check_in(task_id).assignment) is not None:
                out[i] = a
        assert time.monotonic() < give_up, "no assignment"
        time.sleep(0.02)
    return [out[i] for i in range(len(clients))]


def _train_all(clients: list[Client], assigned: list[Assignment]) -> list[RoundReport]:
    reports: list[RoundReport | None] = [None] * len(clients)

    def run(i: int) -> None:
        x, y = local_data(i)
        reports[i] = clients[i].train_round(assigned[i], SoftmaxTrainer(), x, y)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in reports)
    return [r for r in reports if r is not None]


def test_the_rounds_figures_are_the_losses_the_devices_trained_with(
    server: str, tmp_path: Path
) -> None:
    # Prepare
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=1, clients_per_round=3))
        seen = Uploads()
        clients = [Client(server, str(tmp_path / f"d{i}"), mods=(seen,)) for i in range(3)]
        for c in clients:
            c.register()
        assigned = _assign_all(clients, task_id)
        # Execute
        reports = _train_all(clients, assigned)
        round_id = assigned[0].round_id
        status = from_json(
            RoundStatus, wait_until(http, f"/v1/rounds/{round_id}", "state", "committed")
        )
        # Assert: each upload sent its RoundReport's loss, and the round's figures are theirs
        losses = [r.loss for r in reports]
        assert all(a.report_loss is True for a in assigned)
        assert all(math.isfinite(x) and x > 0 for x in losses)
        assert sorted(seen.targets) == sorted(
            f"/v1/rounds/{round_id}/updates?train_loss={x!r}" for x in losses
        )
        meas = status.measurements
        assert meas["train_loss_reports"] == 3
        assert meas["train_loss_median"] == statistics.median(losses)
        assert meas["train_loss_mean"] == math.fsum(losses) / 3
        # ... and the query's bytes are counted alike on both sides of the ledger
        server_side = admin_get(http, f"/v1/rounds/{round_id}/bandwidth")["totals"]
        for kind in ("wire_bytes", "payload_bytes"):
            sdk_up = sum(c.bandwidth[round_id]["up"][kind] for c in clients)
            assert server_side[f"up_{kind}"] == sdk_up, kind
        for c in clients:
            c.close()


def test_an_async_client_sends_its_loss_too(server: str, tmp_path: Path) -> None:
    # Prepare
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=1, clients_per_round=2))

        async def main() -> tuple[list[RoundReport], int]:
            clients = [AsyncClient(server, str(tmp_path / f"a{i}")) for i in range(2)]
            for c in clients:
                await c.register()
            assigned: dict[int, Assignment] = {}
            give_up = time.monotonic() + 30
            while len(assigned) < 2:
                for i, c in enumerate(clients):
                    if i not in assigned and (a := (await c.check_in(task_id)).assignment):
                        assigned[i] = a
                assert time.monotonic() < give_up
                await asyncio.sleep(0.02)
            reports = await asyncio.gather(
                *(
                    c.train_round(assigned[i], SoftmaxTrainer(), *local_data(i))
                    for i, c in enumerate(clients)
                )
            )
            for c in clients:
                await c.aclose()
            return list(reports), assigned[0].round_id

        # Execute
        reports, round_id = asyncio.run(main())
        status = wait_until(http, f"/v1/rounds/{round_id}", "state", "committed")
        # Assert
        losses = [r.loss for r in reports]
        meas = status["measurements"]
        assert meas["train_loss_reports"] == 2
        assert meas["train_loss_median"] == statistics.median(losses)
        assert meas["train_loss_mean"] == math.fsum(losses) / 2


def test_a_dp_tasks_devices_send_no_loss(server: str, tmp_path: Path) -> None:
    # Prepare
    with httpx.Client(base_url=server) as http:
        cfg = task_config(rounds=1, clients_per_round=2, aggregator="dp:clip=1,z=0.5+fedavg")
        task_id = create_task(http, cfg)
        seen = Uploads()
        clients = [Client(server, str(tmp_path / f"d{i}"), mods=(seen,)) for i in range(2)]
        for c in clients:
            c.register()
        assigned = _assign_all(clients, task_id)
        # Execute
        reports = _train_all(clients, assigned)
        status = wait_until(http, f"/v1/rounds/{assigned[0].round_id}", "state", "committed")
        # Assert: trained (finite losses), sent none, accepted, no figures
        assert all(a.report_loss is None for a in assigned)
        assert all(math.isfinite(r.loss) for r in reports)
        assert seen.targets == [f"/v1/rounds/{assigned[0].round_id}/updates"] * 2
        assert status["reports"] == 2
        assert not [k for k in status["measurements"] if k.startswith("train_loss")]
        for c in clients:
            c.close()


class NaNTrainer(SoftmaxTrainer):
    """Trains as SoftmaxTrainer but reports no loss (as a trainer that counted no target)."""

    def train(self, params: npt.NDArray[np.float32], *args: Any, **kw: Any) -> TrainResult:
        out = super().train(params, *args, **kw)
        return replace(out, loss=math.nan)


def test_a_round_whose_device_has_no_loss_counts_the_others(server: str, tmp_path: Path) -> None:
    # Prepare: one device's trainer reports NaN
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=1, clients_per_round=2))
        clients = [Client(server, str(tmp_path / f"d{i}")) for i in range(2)]
        for c in clients:
            c.register()
        assigned = _assign_all(clients, task_id)
        x, y = local_data(0)
        # Execute
        nan_report = clients[0].train_round(assigned[0], NaNTrainer(), x, y)
        ok_report = clients[1].train_round(assigned[1], SoftmaxTrainer(), *local_data(1))
        status = wait_until(http, f"/v1/rounds/{assigned[0].round_id}", "state", "committed")
        # Assert
        assert math.isnan(nan_report.loss)
        meas = status["measurements"]
        assert status["reports"] == 2 and meas["train_loss_reports"] == 1
        assert meas["train_loss_median"] == meas["train_loss_mean"] == ok_report.loss
        for c in clients:
            c.close()
