"""A participation's report counts the check-in that assigned its round, as the round's row in
`Client.bandwidth` and the coordinator's ledger do (helper-296's byte-accounting review, finding
B).

Before, `RoundReport.bytes_up` / `bytes_down` were counted from after that check-in
(`_train_round` took its starting count after it), while the round's row held it: reports said
3,446 B up / 727,773 B down against 3,968 / 728,617 in `bandwidth`, exactly that check-in
(522 B up, 844 B down). Now, for a device's one call in a round, the report is its row, held
here against a byte-counting TCP relay and the coordinator's ledger: plain rounds through
`participate` and through `check_in` then `train_round` (Client and AsyncClient), and a secure
round of three devices.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import encode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from sdk import AsyncClient, Client
from sdk.client import RoundReport, SecureRoundReport
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
)
from tests.coordinator.wire_relay import ByteRelay, exchanges
from tests.sdk import test_client_secure as secure

MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


def _relay_rounds(relay: ByteRelay) -> dict[tuple[str, int], list[int]]:
    """Per (device, ledger round): the relayed [up, down, requests] of its exchanges."""
    out: dict[tuple[str, int], list[int]] = {}
    for up, down in relay.connections():
        for ex in exchanges(up, down):
            device = ex.request.header("x-plume-device")
            if device is None or ex.response is None:
                continue
            rid = ex.response.header("x-plume-ledger-round")
            if rid is None:
                continue
            cell = out.setdefault((device, int(rid)), [0, 0, 0])
            cell[0] += ex.up
            cell[1] += ex.down
            cell[2] += 1
    return out


def _ledger(admin: httpx.Client, round_id: int) -> dict[tuple[str, str], int]:
    """The coordinator's ledger of a round: wire bytes per (device, direction)."""
    r = admin.get(f"/v1/rounds/{round_id}/bandwidth")
    assert r.status_code == 200, r.text
    return {(row["device_id"], row["direction"]): row["wire_bytes"] for row in r.json()["rows"]}


def _held_to_everything(
    report: RoundReport,
    device: str,
    row: dict[str, dict[str, int]],
    relayed: dict[tuple[str, int], list[int]],
    ledger: dict[tuple[str, str], int],
) -> None:
    """The report's bytes are its row's, the relay's and the ledger's for the device; the row
    holds the check-in that assigned the round (a request more than the download and upload)."""
    rid = report.round_id
    wire = [row["up"]["wire_bytes"], row["down"]["wire_bytes"]]
    assert [report.bytes_up, report.bytes_down] == wire
    assert relayed[(device, rid)][:2] == wire
    assert [ledger[(device, "up")], ledger[(device, "down")]] == wire


# -- plain rounds ---------------------------------------------------------------------------------


@pytest.fixture()
def plain(tmp_path: Path) -> Iterator[tuple[ByteRelay, httpx.Client, str, int]]:
    """(relay, admin client, relay url, task id): a task of one device a round, reached through
    a byte-counting relay."""
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    with ServerThread(cfg) as upstream:
        with httpx.Client(base_url=upstream, headers={"authorization": f"Bearer {ADMIN}"}) as admin:
            cfg_task = task_config(rounds=2, clients_per_round=1, selection_timeout_s=0.3)
            task_id = create_task(admin, cfg_task)
            relay = ByteRelay(upstream)
            with relay as url:
                yield relay, admin, url, task_id


@MODES
@pytest.mark.parametrize("how", ["participate", "check_in+train_round"])
def test_a_plain_report_is_its_rounds_row(
    plain: tuple[ByteRelay, httpx.Client, str, int], tmp_path: Path, asynchronous: bool, how: str
) -> None:
    # Prepare
    relay, admin, url, task_id = plain
    x, y = local_data(0)

    # Execute: one device takes part in round 1
    if asynchronous:

        async def go() -> tuple[str, RoundReport, dict[str, dict[str, int]]]:
            async with AsyncClient(url, str(tmp_path / "dev")) as c:
                await c.register()
                if how == "participate":
                    got = await c.participate(SoftmaxTrainer(), x, y, task_id=task_id)
                    assert got is not None
                else:
                    while (a := (await c.check_in(task_id)).assignment) is None:
                        await asyncio.sleep(0.05)
                    got = await c.train_round(a, SoftmaxTrainer(), x, y)
                return c.device_id, got, c.bandwidth[got.round_id]

        device, report, row = asyncio.run(go())
    else:
        with Client(url, str(tmp_path / "dev")) as c:
            c.register()
            if how == "participate":
                got = c.participate(SoftmaxTrainer(), x, y, task_id=task_id)
                assert got is not None
            else:
                while (a := c.check_in(task_id).assignment) is None:
                    time.sleep(0.05)
                got = c.train_round(a, SoftmaxTrainer(), x, y)
            device, report, row = c.device_id, got, c.bandwidth[got.round_id]

    # Assert: the report is the round's row (check-in, download, upload: 3 requests), the
    # relay's and the ledger's count of the device (before: the row less the check-in)
    assert report.round_id == 1 and report.receipt.accepted
    assert row["up"]["requests"] == row["down"]["requests"] == 3
    _held_to_everything(report, device, row, _relay_rounds(relay), _ledger(admin, 1))


# -- a secure round ---------------------------------------------------------------------------------


@pytest.fixture()
def secure_task(tmp_path: Path) -> Iterator[tuple[ByteRelay, httpx.Client, str, int]]:
    """A secure task of three devices a round (tests/sdk/test_client_secure.py's), through a
    byte-counting relay."""
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=secure.ADMIN, poll_s=0.05, tick_s=0.02
    )
    with ServerThread(cfg) as upstream:
        with httpx.Client(
            base_url=upstream, headers={"authorization": f"Bearer {secure.ADMIN}"}
        ) as admin:
            # Every stage closes once all three uploaded: none is meant to time out (60 s)
            task = secure._task(rounds=1, stage_timeout_s=60.0)
            task_id = int(admin.post("/v1/admin/tasks", json=task).json()["task_id"])
            snap = encode_snapshot(np.zeros(secure.SPEC.size, np.float32), secure.SPEC, "fp32")
            octet = {"content-type": "application/octet-stream"}
            r = admin.put(f"/v1/admin/tasks/{task_id}/model", content=snap, headers=octet)
            assert r.is_success, r.text
            relay = ByteRelay(upstream)
            with relay as url:
                yield relay, admin, url, task_id


def test_a_secure_report_is_its_rounds_row(
    secure_task: tuple[ByteRelay, httpx.Client, str, int], tmp_path: Path
) -> None:
    # Prepare: three devices, the first an AsyncClient
    relay, admin, url, task_id = secure_task
    x, y = secure._data()
    out: list[Any] = [None] * 3

    def device(i: int) -> None:
        try:
            if i == 0:

                async def go() -> Any:
                    async with AsyncClient(url, str(tmp_path / "d0")) as c:
                        await c.register()
                        got = await c.participate(secure.ShiftTrainer(0.01), x, y, task_id=task_id)
                        return c.device_id, got, c.bandwidth[got.round_id]

                out[0] = asyncio.run(go())
                return
            with Client(url, str(tmp_path / f"d{i}")) as c:
                c.register()
                got = c.participate(secure.ShiftTrainer(0.01 * (i + 1)), x, y, task_id=task_id)
                assert got is not None
                out[i] = (c.device_id, got, c.bandwidth[got.round_id])
        except BaseException as exc:  # surfaced below
            out[i] = exc

    # Execute
    threads = [threading.Thread(target=device, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)

    # Assert: every device completed the round; each report is its row (the check-in, the
    # model and setup downloads, the stages' uploads and downloads), the relay's and the
    # ledger's count of the device
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(o, tuple) for o in out), out
    relayed = _relay_rounds(relay)
    ledger = _ledger(admin, out[0][1].round_id)
    for device_id, report, row in out:
        assert isinstance(report, SecureRoundReport) and report.completed, report
        _held_to_everything(report, device_id, row, relayed, ledger)
