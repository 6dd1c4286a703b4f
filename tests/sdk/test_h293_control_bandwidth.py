"""`Client.control_bandwidth` / `AsyncClient.control_bandwidth`: the device's own count of the
exchanges the coordinator puts in no round (registration, check-ins answered without an
assignment, ...). Before, `bandwidth` (keyed by round) was the SDK's only count, and the
idle check-ins of a device waiting for a round (about 0.7 KB each) were counted nowhere on the
device. Each answered exchange is in exactly one of the two; held against the bytes a TCP relay
copied, per device."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import request_wire_bytes, response_wire_bytes
from protocol.names import Path as Route
from sdk import AsyncClient, Client
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
    wait_until,
)
from tests.coordinator.wire_relay import ByteRelay, exchanges

MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
CELL = {"payload_bytes", "wire_bytes", "dense_bytes", "requests"}

_ASSIGNMENT = {
    "task_id": 1, "round_id": 7, "base_version": 0, "model_name": "m",
    "spec": [{"name": "w", "shape": [4]}], "codec": {}, "training": {},
    "deadline_unix": 4102444800.0, "model_path": "/v1/tasks/1/model",
    "upload_path": "/v1/rounds/7/updates", "max_upload_bytes": 1 << 20, "seed": 0,
}  # fmt: skip


class _Mock:
    """A coordinator stand-in: register, then `waits` check-ins answered "wait" (no ledger
    header, the first one a 503 first), then one answered with an assignment of round 7
    (counted in it: `x-plume-ledger-round: 7`). Keeps the wire bytes of each exchange it
    answered without a ledger header, computed from the request it received."""

    def __init__(self, waits: int) -> None:
        self.waits = waits
        self.check_ins = 0
        self.busy_once = True
        self.control = {"up": 0, "down": 0, "requests": 0}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        ledger: dict[str, str] = {}
        if request.url.path == Route.REGISTER:
            device = request.headers["x-plume-device"]
            response = httpx.Response(200, json={"device_id": device, "created": True})
        elif self.busy_once:
            self.busy_once = False
            response = httpx.Response(503, json={"reason": "busy", "detail": "busy"})
        else:
            self.check_ins += 1
            if self.check_ins <= self.waits:
                body = {"action": "wait", "retry_after_s": 0.0, "detail": "not selected yet"}
            else:
                body = {"action": "train", "retry_after_s": 0.0, "assignment": _ASSIGNMENT}
                ledger = {"x-plume-ledger-round": "7"}
            response = httpx.Response(200, content=json.dumps(body).encode(), headers=ledger)
        if not ledger:
            self.control["up"] += request_wire_bytes(
                request.method, request.url.raw_path.decode(), request.headers.raw,
                len(request.content),
            )  # fmt: skip
            self.control["down"] += response_wire_bytes(
                response.status_code, response.headers.raw, len(response.content)
            )
            self.control["requests"] += 1
        return response


def _no_sleep(_: float) -> None:
    pass


@MODES
def test_idle_check_ins_are_control_traffic_and_an_assigned_one_is_its_rounds(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: a fresh client holds a zero row of each direction
    mock = _Mock(waits=3)

    def run(client: Any) -> None:
        assert client.control_bandwidth == {d: dict.fromkeys(CELL, 0) for d in ("up", "down")}
        assert client.bandwidth == {}

    # Execute: register, then check in until the assignment (a 503 retried on the way)
    if asynchronous:

        async def go() -> Any:
            async with AsyncClient(
                "http://coord", str(tmp_path / "dev"), transport=httpx.MockTransport(mock),
                backoff_s=0.0,
            ) as client:  # fmt: skip
                run(client)
                await client.register()
                while (await client.check_in()).assignment is None:
                    pass
                return client.control_bandwidth, client.bandwidth

        control, rounds = asyncio.run(go())
    else:
        with Client(
            "http://coord", str(tmp_path / "dev"), transport=httpx.MockTransport(mock),
            backoff_s=0.0, sleep=_no_sleep,
        ) as client:  # fmt: skip
            run(client)
            client.register()
            while client.check_in().assignment is None:
                pass
            control, rounds = client.control_bandwidth, client.bandwidth
    # Assert: the register, the 503 and the three waits are control traffic, byte for byte as
    # the server side computes them; the assigned check-in is in round 7's row only
    assert control["up"]["requests"] == control["down"]["requests"] == 5
    assert control["up"]["wire_bytes"] == mock.control["up"]
    assert control["down"]["wire_bytes"] == mock.control["down"]
    assert mock.control["requests"] == 5
    assert control["up"]["payload_bytes"] == control["down"]["payload_bytes"] == 0
    assert control["up"]["dense_bytes"] == control["down"]["dense_bytes"] == 0
    assert list(rounds) == [7]
    assert rounds[7]["up"]["requests"] == rounds[7]["down"]["requests"] == 1


def test_the_count_keeps_its_size_however_many_check_ins(tmp_path: Path) -> None:
    # Prepare: a coordinator that says "wait" to every check-in
    mock = _Mock(waits=10**9)
    mock.busy_once = False
    with Client(
        "http://coord", str(tmp_path / "dev"), transport=httpx.MockTransport(mock),
        sleep=_no_sleep,
    ) as client:  # fmt: skip
        # Execute
        for _ in range(300):
            client.check_in()
        # Assert: still one cell per direction, which counted every check-in
        assert set(client.control_bandwidth) == {"up", "down"}
        assert all(set(cell) == CELL for cell in client.control_bandwidth.values())
        assert client.control_bandwidth["up"]["requests"] == 300
        assert client.control_bandwidth["down"]["wire_bytes"] == mock.control["down"]
        assert client.bandwidth == {}


# -- against a loopback coordinator, through a byte-counting relay ----------------------------


@pytest.fixture()
def relayed(tmp_path: Path) -> Iterator[tuple[ByteRelay, str, str]]:
    """(relay, coordinator url, relay url): devices reach the coordinator through the relay."""
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    with ServerThread(cfg) as upstream:
        relay = ByteRelay(upstream)
        with relay as url:
            yield relay, upstream, url


def _relayed_per_device(relay: ByteRelay) -> dict[str, dict[str, Any]]:
    """Per device (its x-plume-device), the relayed bytes: `control` [up, down, requests] of
    the exchanges whose answer names no ledger round, `rounds` {round: [up, down, requests]}."""
    out: dict[str, dict[str, Any]] = {}
    for up, down in relay.connections():
        for ex in exchanges(up, down):
            device = ex.request.header("x-plume-device")
            if device is None or ex.response is None:
                continue
            mine = out.setdefault(device, {"control": [0, 0, 0], "rounds": {}})
            rid = ex.response.header("x-plume-ledger-round")
            cell = mine["control"] if rid is None else mine["rounds"].setdefault(int(rid), [0] * 3)
            cell[0] += ex.up
            cell[1] += ex.down
            cell[2] += 1
    return out


def _device_view(client: Any) -> dict[str, Any]:
    c = client.control_bandwidth
    return {
        "control": [c["up"]["wire_bytes"], c["down"]["wire_bytes"], c["up"]["requests"]],
        "rounds": {
            rid: [row["up"]["wire_bytes"], row["down"]["wire_bytes"], row["up"]["requests"]]
            for rid, row in client.bandwidth.items()
        },
    }


@MODES
def test_control_and_round_bytes_are_the_relayed_bytes_of_each_device(
    relayed: tuple[ByteRelay, str, str], tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: a round of two devices; the first checks in about 1 s before the second, so it
    # waits (idle check-ins) while the round gathers
    relay, upstream, url = relayed
    with httpx.Client(base_url=upstream) as admin:
        task_id = create_task(
            admin, task_config(rounds=1, clients_per_round=2, selection_timeout_s=60.0)
        )
        views: dict[str, dict[str, Any]] = {}
        reports: list[Any] = []

        # Execute: both take part; then each checks in once more (the answer carries its upload's
        # round outcome: control traffic too)
        if asynchronous:

            async def device(i: int, client: AsyncClient) -> None:
                await asyncio.sleep(1.0 * i)
                await client.register()
                x, y = local_data(i)
                reports.append(await client.participate(SoftmaxTrainer(), x, y, task_id=task_id))

            async def fleet() -> None:
                clients = [AsyncClient(url, str(tmp_path / f"dev{i}")) for i in range(2)]
                try:
                    await asyncio.gather(*(device(i, c) for i, c in enumerate(clients)))
                    wait_until(admin, f"/v1/admin/tasks/{task_id}", "state", "done")
                    for client in clients:
                        await client.check_in(task_id)
                        views[client.device_id] = _device_view(client)
                finally:
                    await asyncio.gather(*(c.aclose() for c in clients))

            asyncio.run(fleet())
        else:
            errors: list[BaseException] = []

            def run(i: int) -> None:
                try:
                    time.sleep(1.0 * i)
                    with Client(url, str(tmp_path / f"dev{i}")) as client:
                        client.register()
                        x, y = local_data(i)
                        reports.append(client.participate(SoftmaxTrainer(), x, y, task_id=task_id))
                        wait_until(admin, f"/v1/admin/tasks/{task_id}", "state", "done")
                        client.check_in(task_id)
                        views[client.device_id] = _device_view(client)
                except BaseException as exc:  # surfaced below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
        # Assert: both took part in round 1; per device, the SDK's control and round counts are
        # exactly what the relay carried (wire bytes up and down, requests)
        assert len(reports) == 2 and all(r is not None and r.round_id == 1 for r in reports)
        seen = _relayed_per_device(relay)
        assert set(seen) == set(views)
        for device, view in views.items():
            assert view == seen[device], device
        waited = max(views.values(), key=lambda v: v["control"][2])
        # register, idle check-ins while the round gathered, and the last check-in
        assert waited["control"][2] >= 4
        assert waited["control"][0] > 0 and waited["control"][1] > 0
