"""A secure round's bandwidth totals count its accepted masked inputs (helper-54b).

`up_accepted_payload_bytes` and `up_accepted_updates` (b6d438e) counted the `updates` table,
which a secure round never writes: every secure round reported 0 and 0 whatever it took. A
secure round's update is its masked input, so these now count each device's accepted
masked-input upload once, by its payload bytes (what its receipt's `payload_bytes` says),
whether or not the device then answered the unmask request; the other stages' messages
(advertise-keys, share-keys, unmask: protocol traffic, not an update) stay in the rows only.
A device reads its own figures; the rows are as before (up and down per device)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol.secagg import Stage

from .test_service_secure import _clients, _config, _run_round
from .test_service_support import (
    ADMIN,
    admin_get,
    create_task,
    drive_stages,
    expire_stage,
    serve_fast,
    signed_headers,
    wait_until,
)

served = pytest.fixture(serve_fast, name="served")
ACCEPTED = ("up_accepted_payload_bytes", "up_accepted_updates")


def _accepted(totals: dict[str, int]) -> tuple[int, int]:
    return totals["up_accepted_payload_bytes"], totals["up_accepted_updates"]


def test_a_secure_round_counts_each_accepted_masked_input_once(
    served: ServerThread, tmp_path: Path
) -> None:
    # Prepare: 6 devices; one leaves before share-keys (no masked input), one after its
    # masked input was accepted (no unmask answer)
    with httpx.Client(base_url=served.url) as http:
        task_id = create_task(http, _config(rounds=1, n=6))
        coordinator = served.app.state.coordinator
        clock = drive_stages(coordinator, task_id)
        clients = _clients(served.url, tmp_path, 6)
        ids = [c.device_id for c in clients]
        drops = {ids[0]: Stage.SHARE_KEYS, ids[1]: Stage.UNMASK}

        def expiries() -> None:
            expire_stage(coordinator, task_id, clock, Stage.SHARE_KEYS, 5)
            expire_stage(coordinator, task_id, clock, Stage.UNMASK, 4)

        # Execute
        reports = _run_round(clients, task_id, 1, drops, expiries)
        wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        round_id = reports[ids[2]].round_id
        report = admin_get(http, f"/v1/rounds/{round_id}/bandwidth")

        # Assert: the five masked inputs the round took, each by its receipt's size
        masked = {d: reports[d].receipt.payload_bytes for d in ids[1:]}
        assert all(reports[d].receipt.accepted for d in ids[1:])
        assert not reports[ids[0]].receipt.accepted
        assert all(n > 0 for n in masked.values())
        assert _accepted(report["totals"]) == (sum(masked.values()), 5)
        # less than everything the devices uploaded in the round (keys, shares, unmask)
        assert report["totals"]["up_accepted_payload_bytes"] < report["totals"]["up_payload_bytes"]
        # the rows are the up and down traffic per device, as before
        assert {(r["device_id"], r["direction"]) for r in report["rows"]} == {
            (d, direction) for d in ids for direction in ("up", "down")
        }
        # Each device reads its own: the one that left before its masked input none
        path = f"/v1/rounds/{round_id}/bandwidth"
        for c in clients:
            own = http.get(path, headers=signed_headers(c._core.key, "GET", path, round_id))
            assert own.status_code == 200, own.text
            mine = (masked[c.device_id], 1) if c.device_id in masked else (0, 0)
            assert _accepted(own.json()["totals"]) == mine
            assert {r["device_id"] for r in own.json()["rows"]} == {c.device_id}

    # A restarted coordinator reads the same figures from its database (the registry that
    # held the round's masked inputs is gone)
    served.stop()
    with ServerThread(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)) as url:
        again = admin_get(url, f"/v1/rounds/{round_id}/bandwidth")
    # (its rows have grown by the devices' own reads above, made within the ledger's grace)
    assert _accepted(again["totals"]) == (sum(masked.values()), 5)
