"""Where a refused upload's bytes go (helper-53c, from the hostile-input review).

A loopback coordinator, one round of two selected devices. Every kind of refused upload is sent
and its bytes followed: one the round can attribute (authenticated, read whole, signed for the
round by a device selected for it: 422 `bad_frame`, 409 `duplicate_upload`, 409 `round_closed`
past the deadline) is in the round's ledger rows, payload and dense bytes included, as the
device's SDK counts it; one it cannot (401 `bad_signature`, 401 `replayed_nonce`, 413 over the
cap) is control traffic. Neither is ever in the round's accepted figures
(`up_accepted_payload_bytes`, `up_accepted_updates`), which count each accepted update frame
once. Before, the report had no accepted figure: a round's only upload byte count, its
`up_payload_bytes`, held a 422's garbage body and a dense model's baseline for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread
from protocol.messages import Assignment
from sdk.client import Client

from .test_service_support import (
    SPEC,
    admin_get,
    await_assignment,
    create_task,
    device_client,
    serve_fast,
    signed_headers,
    task_config,
)

served = pytest.fixture(serve_fast, name="served")
LEDGER = "x-plume-ledger-round"


def _totals(http: httpx.Client, round_id: int) -> dict[str, int]:
    totals: dict[str, int] = admin_get(http, f"/v1/rounds/{round_id}/bandwidth")["totals"]
    return totals


def _control_up(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    (line,) = [
        x
        for x in text.splitlines()
        if x.startswith('plume_control_wire_bytes_total{direction="up"}')
    ]
    return float(line.split()[-1])


class _Round:
    def __init__(self, http: httpx.Client, devices: list[Client], a: Assignment) -> None:
        self.http, self.devices, self.a = http, devices, a
        self.path = f"/v1/rounds/{a.round_id}/updates"

    def frame(self, device: Client, shift: float) -> bytes:
        params, _ = device.fetch_model(self.a)
        frame: bytes = device._core.encode(self.a, SPEC, params, params + shift, 40).frame
        return frame

    def headers(self, device: Client, body: bytes, key: str | None = None) -> dict[str, str]:
        signed = signed_headers(device._core.key, "POST", self.path, self.a.round_id, body)
        return {
            **signed,
            "content-type": "application/octet-stream",
            "idempotency-key": key or uuid.uuid4().hex,
        }

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.http.post(self.path, content=body, headers=headers)


@pytest.fixture
def round_of_two(served: ServerThread, tmp_path: Path) -> Iterator[tuple[_Round, Any]]:
    with httpx.Client(base_url=served.url) as http:
        task_id = create_task(http, task_config(rounds=1, clients_per_round=2, deadline_s=30.0))
        devices = [device_client(served.url, str(tmp_path / n)) for n in "ab"]
        for d in devices:
            d.register()
        assert devices[0].check_in(task_id).assignment is None  # waits in the pool
        a = await_assignment(devices[1], task_id)
        assert await_assignment(devices[0], task_id).round_id == a.round_id
        yield _Round(http, devices, a), served.app.state.coordinator
        for d in devices:
            d.close()


def test_refused_uploads_count_where_documented_and_never_as_accepted(
    round_of_two: tuple[_Round, Any],
) -> None:
    # Prepare: both devices selected, the round open, their models downloaded, nothing
    # uploaded
    r, coordinator = round_of_two
    a, b = r.devices
    rid = r.a.round_id
    frame, other, late = r.frame(a, 0.05), r.frame(a, 0.07), r.frame(b, 0.03)
    start = _totals(r.http, rid)
    assert start["up_accepted_payload_bytes"] == start["up_accepted_updates"] == 0

    # Execute + Assert, kind by kind
    # 422 bad_frame: read whole and authenticated, from a selected device: in the round's rows
    garbage = b"not an update frame" * 5
    resp = r.post(garbage, r.headers(a, garbage))
    assert (resp.status_code, resp.json()["reason"]) == (422, "bad_frame")
    assert resp.headers[LEDGER] == str(rid)
    now = _totals(r.http, rid)
    assert now["up_requests"] == start["up_requests"] + 1
    assert now["up_payload_bytes"] == start["up_payload_bytes"] + len(garbage)
    assert now["up_dense_bytes"] == start["up_dense_bytes"] + SPEC.dense_bytes
    assert (now["up_accepted_payload_bytes"], now["up_accepted_updates"]) == (0, 0)

    # 401 bad_signature and 413 too_large: not attributable, control traffic only
    tampered = bytearray(frame)
    tampered[-1] ^= 1
    control = _control_up(r.http)
    resp = r.post(bytes(tampered), r.headers(a, frame))
    assert (resp.status_code, resp.json()["reason"]) == (401, "bad_signature")
    assert LEDGER not in resp.headers
    big = b"\0" * (r.a.max_upload_bytes + 1)
    resp = r.post(big, r.headers(a, big))
    assert (resp.status_code, resp.json()["reason"]) == (413, "too_large")
    assert LEDGER not in resp.headers
    assert _totals(r.http, rid) == now
    assert _control_up(r.http) > control

    # An accepted upload: the only bytes in the accepted figures
    accepted_headers = r.headers(a, frame)
    resp = r.post(frame, accepted_headers)
    assert resp.status_code == 200 and resp.json()["accepted"], resp.text
    now = _totals(r.http, rid)
    assert (now["up_accepted_payload_bytes"], now["up_accepted_updates"]) == (len(frame), 1)

    # 401 replayed_nonce: the accepted request sent again as it was, control traffic
    resp = r.post(frame, accepted_headers)
    assert (resp.status_code, resp.json()["reason"]) == (401, "replayed_nonce")
    assert LEDGER not in resp.headers
    assert _totals(r.http, rid) == now

    # 409 duplicate_upload: another update from a device that reported, in the round's rows
    resp = r.post(other, r.headers(a, other))
    assert (resp.status_code, resp.json()["reason"]) == (409, "duplicate_upload")
    assert resp.headers[LEDGER] == str(rid)
    after = _totals(r.http, rid)
    assert after["up_payload_bytes"] == now["up_payload_bytes"] + len(other)
    assert (after["up_accepted_payload_bytes"], after["up_accepted_updates"]) == (len(frame), 1)

    # 409 round_closed: past the deadline (on the coordinator's clock), within the ledger's
    # grace, a straggler's upload is in the round's rows and not accepted
    real_clock = coordinator.clock
    coordinator.clock = lambda: real_clock() + 31.0  # the 30 s deadline
    state = ""
    for _ in range(500):
        state = admin_get(r.http, f"/v1/rounds/{rid}")["state"]
        if state == "committed":
            break
        time.sleep(0.02)
    assert state == "committed"
    resp = r.post(late, r.headers(b, late))
    assert (resp.status_code, resp.json()["reason"]) == (409, "round_closed")
    assert resp.headers[LEDGER] == str(rid)
    final = _totals(r.http, rid)
    assert final["up_payload_bytes"] == after["up_payload_bytes"] + len(late)
    assert (final["up_accepted_payload_bytes"], final["up_accepted_updates"]) == (len(frame), 1)

    # A device reads its own accepted figures only; b's upload was refused
    path = f"/v1/rounds/{rid}/bandwidth"
    for device, mine in ((a, (len(frame), 1)), (b, (0, 0))):
        own = r.http.get(path, headers=signed_headers(device._core.key, "GET", path, rid))
        assert own.status_code == 200, own.text
        totals = own.json()["totals"]
        assert (totals["up_accepted_payload_bytes"], totals["up_accepted_updates"]) == mine
