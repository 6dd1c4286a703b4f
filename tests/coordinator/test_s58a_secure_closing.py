"""docs/http-api.md's 409 `round_closed` "secure round N is closing" (rounds.py,
`Coordinator._secure_round`): a stage request that reaches a secure round while the
coordinator closes it (its unmask running in a worker thread) is refused so, and changes
neither the round nor the published model. It had no test (the committed and abandoned
details have theirs: test_s57d_secure_closed.py).

The close is held by an Event (test_h175's `_HeldClose`), not a sleep: the requests are
answered while it is still held, then it is released and the round commits as usual.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from coordinator.secure import SecureCoordinator
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import CodecParams
from protocol.secagg import AdvertiseKeys
from sdk.client import Client

from .test_h175_secure_close_unblocked import WAIT_S, _HeldClose
from .test_service_support import (
    ADMIN,
    SPEC,
    admin_get,
    await_assignment,
    create_task,
    device_client,
    signed_headers,
    task_config,
    wait_until,
)


def test_stage_requests_while_a_secure_round_closes_are_409_is_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a secure round of 3 devices, its close held once it starts
    held = _HeldClose(SecureCoordinator.close_round)
    monkeypatch.setattr(SecureCoordinator, "close_round", held.method())
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02)
    with ServerThread(cfg) as url, httpx.Client(base_url=url, timeout=WAIT_S) as http:
        tc = task_config(
            rounds=1,
            clients_per_round=3,
            over_selection=1.0,
            min_reports=3,
            selection_timeout_s=60.0,
            deadline_s=60.0,
            downlink=CodecParams(topk=1.0, bits=32),
            secure={"coord_fraction": 0.5, "stage_timeout_s": 20.0},
        )
        tid = create_task(http, tc)
        clients = [device_client(url, str(tmp_path / f"d{i}")) for i in range(3)]
        for c in clients:
            c.register()
        rid: dict[str, int] = {}

        def run(c: Client) -> None:
            a = await_assignment(c, tid)
            rid["r"] = a.round_id
            c.secure_round(a, lambda p: (np.full(SPEC.size, 0.01, np.float32), 1, 0.0))

        devices = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
        for t in devices:
            t.start()
        try:
            assert held.entered.wait(WAIT_S), "the round never started to close"
            round_id = rid["r"]
            round_before = admin_get(http, f"/v1/rounds/{round_id}")
            task_before = admin_get(http, f"/v1/admin/tasks/{tid}")
            key = clients[0]._core.key
            # Execute: a selected device's stage upload and stage download, signed
            up_path = f"/v1/secure/rounds/{round_id}/stages/advertise-keys"
            body = AdvertiseKeys(round_id, 0, b"\x01" * 32, b"\x02" * 32).to_bytes()
            upload = http.post(
                up_path,
                content=body,
                headers={
                    "content-type": "application/octet-stream",
                    **signed_headers(key, "POST", up_path, round_id, body),
                },
            )
            down_path = f"/v1/secure/rounds/{round_id}/stages/masked-input"
            download = http.get(down_path, headers=signed_headers(key, "GET", down_path, round_id))
            # Assert: both refused so while the close is held; nothing changed
            assert not held.done.is_set() and not held.release.is_set()
            for r in (upload, download):
                assert r.status_code == 409, r.text
                assert r.json() == {
                    "reason": "round_closed",
                    "detail": f"secure round {round_id} is closing",
                }
            assert round_before["state"] == "aggregating"
            assert admin_get(http, f"/v1/rounds/{round_id}") == round_before
            assert admin_get(http, f"/v1/admin/tasks/{tid}") == task_before
            assert task_before["version"] == 0
        finally:
            held.release.set()
            for t in devices:
                t.join(WAIT_S)
        # The round still commits, once: the refused requests left it as it was
        assert held.done.wait(WAIT_S) and held.calls == 1
        assert wait_until(http, f"/v1/admin/tasks/{tid}", "version", 1)["version"] == 1
        assert admin_get(http, f"/v1/rounds/{round_id}")["state"] == "committed"
