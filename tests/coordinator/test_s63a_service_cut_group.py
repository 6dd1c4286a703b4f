"""In the coordinator service, a device of a group the round's close cut short stops polling
then: its stage download is 409 `round_closed`, not 425 until its own deadline (s63a).

The service reaches `SecureRegistry.finish` only after `begin_close` marked the round closing,
and `_secure_round` answers every stage request of a closing or closed round 409
`round_closed` before the registry is asked; so the service's answers were already
definitive, and this test pins them (it passes before s63a's registry change too). The SDK
ends the device's round on that answer with a report, never an exception, and never waits out
`max_stage_wait_s`.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import CodecParams
from protocol.secagg import Stage
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SPEC,
    admin_get,
    await_assignment,
    create_task,
    poll_until,
    task_config,
)

WAIT_S = 60.0


def test_a_cut_short_group_s_poll_ends_with_round_closed(tmp_path: Path) -> None:
    # Prepare: six devices in two groups of three; one device drops before share-keys, so
    # its group stays in share-keys (its stage timeout is 60 s) while the other completes
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02)
    server = ServerThread(cfg)
    with server as url, httpx.Client(base_url=url, timeout=WAIT_S) as http:
        tc = task_config(
            rounds=1,
            clients_per_round=6,
            over_selection=1.0,
            min_reports=2,
            selection_timeout_s=60.0,
            deadline_s=30.0,
            downlink=CodecParams(topk=1.0, bits=32),
            secure={"coord_fraction": 0.5, "stage_timeout_s": 60.0, "group_size": 3},
        )
        tid = create_task(http, tc)
        coordinator = server.app.state.coordinator
        clients = [Client(url, str(tmp_path / f"d{i}")) for i in range(6)]
        for c in clients:
            c.register()
        reports: dict[int, Any] = {}
        ended: dict[int, float] = {}
        rid: dict[str, int] = {}

        def run(i: int) -> None:
            a = await_assignment(clients[i], tid)
            rid["r"] = a.round_id
            reports[i] = clients[i].secure_round(
                a,
                lambda p: (np.full(SPEC.size, 0.01, np.float32), 1, 0.0),
                drop_at=Stage.SHARE_KEYS if i == 0 else None,
            )
            ended[i] = time.monotonic()

        devices = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(6)]
        for t in devices:
            t.start()
        try:
            # Wait: the complete group answered its unmask request, the other sits in share-keys
            give_up = time.monotonic() + WAIT_S
            while True:
                cur = coordinator.runtimes[tid].current
                if cur is not None:
                    counts = coordinator.runtimes[tid].secure.registry.stage_counts(cur.round_id)
                    if counts[str(Stage.UNMASK)] == 3 and counts[str(Stage.SHARE_KEYS)] == 5:
                        break
                assert time.monotonic() < give_up, "the round never reached that point"
                time.sleep(0.02)
            time.sleep(0.3)  # the cut group's two devices are polling share-keys (425)
            # Execute: the round's deadline passes on the coordinator's clock
            real_clock = coordinator.clock
            coordinator.clock = lambda: real_clock() + tc.deadline_s
            closed_at = time.monotonic()
        finally:
            for t in devices:
                t.join(WAIT_S)
            for c in clients:
                c.close()
        # The devices end on the close's first answer (409 "closing", once `begin_close` ran);
        # the commit comes after it, off the event loop: read the round once it has closed.
        path = f"/v1/rounds/{rid['r']}"
        poll_until(
            lambda: admin_get(http, path)["state"] in ("committed", "abandoned"),
            "the round never closed",
            WAIT_S,
        )
        status = http.get(path, headers={"authorization": f"Bearer {ADMIN}"})
    # Assert: the round committed with the complete group; the cut group's two devices ended
    # on the close's 409 round_closed, within seconds, not at their 30 s round deadline
    assert status.status_code == 200 and status.json()["state"] == "committed", status.text
    assert sorted(r.completed for r in reports.values()) == [False] * 3 + [True] * 3
    cut = [i for i, r in reports.items() if not r.completed and i != 0]
    assert len(cut) == 2
    for i in cut:
        r = reports[i]
        assert r.stages == [str(Stage.ADVERTISE_KEYS), str(Stage.SHARE_KEYS)]
        assert re.fullmatch(
            rf"after share-keys: secure round {rid['r']} is (closing|committed)", r.detail
        ), r.detail
        assert ended[i] - closed_at < 10.0
    assert reports[0].detail == "dropped before share-keys"
