"""While `SecureRegistry.finish` unmasks (the round sealed, e040726) and after it, the round's
current stage is none (the status says "finishing") and the round is ready, also when the close
cut a group short at an earlier stage. Before, `current_stage` named that group's old stage
(helper-185's sealed_stage.py printed `share-keys` while the round was finishing), and the
round's status said so too."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from coordinator.secure import SecureCoordinator
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import CodecParams
from protocol.secagg import Stage
from sdk.client import Client, ClientError

from .test_h175_secure_close_unblocked import WAIT_S, _HeldClose, _in_thread, _two_groups
from .test_service_support import (
    ADMIN,
    SPEC,
    await_assignment,
    await_stage,
    create_task,
    task_config,
)


def test_a_sealed_round_has_no_current_stage_while_and_after_it_unmasks() -> None:
    # Prepare: group 0 finished every stage, group 1 only advertised its keys; the
    # coordinator's close held once it starts
    reg, _fleet, _first, _second = _two_groups()
    assert reg.current_stage(1) == Stage.SHARE_KEYS and not reg.ready(1)
    held = _HeldClose(type(reg.coordinator).close_round)
    coord = reg.coordinator
    coord.close_round = lambda *a, **k: held(coord, *a, **k)  # type: ignore[method-assign]
    finisher, out = _in_thread(lambda: reg.finish(1))
    try:
        assert held.entered.wait(WAIT_S)
        # Execute / Assert: while it unmasks, group 1 (cut short at share-keys) is no stage
        # of the round's
        during = (reg.current_stage(1), reg.ready(1))
    finally:
        held.release.set()
    finisher.join(WAIT_S)
    assert during == (None, True)
    # ... nor after: the outcome counts group 1 as aborted
    outcome = out["value"]
    assert outcome.committed and outcome.aborted_groups == 1
    assert reg.current_stage(1) is None and reg.ready(1)
    # the stage counts are those uploaded, as before
    assert reg.stage_counts(1)[str(Stage.SHARE_KEYS)] == 3


def test_a_round_whose_close_raised_stays_finishing() -> None:
    # Prepare: a close whose before_unmask raises (as the store's write may)
    reg, _fleet, _first, _second = _two_groups()
    reg.coordinator.pending_dp = lambda task: {"x": 1}  # type: ignore[method-assign]

    def refuse(dp: dict[str, Any]) -> None:
        raise OSError("disk full")

    # Execute
    with pytest.raises(OSError, match="disk full"):
        reg.finish(1, refuse)
    # Assert: still sealed (no upload changes it), so no stage; a later finish closes it
    assert reg.result(1) is None
    assert reg.current_stage(1) is None and reg.ready(1)
    assert reg.finish(1).committed and reg.current_stage(1) is None


def test_the_round_status_says_finishing_while_a_cut_short_round_unmasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a secure round of 3 devices, one of which never uploads its share-keys, with a
    # round deadline before the stage's: the round's close cuts the group short at share-keys.
    # The deadline passes on the coordinator's clock once share-keys holds the other two
    # uploads. The close is held once it starts.
    held = _HeldClose(SecureCoordinator.close_round)
    monkeypatch.setattr(SecureCoordinator, "close_round", held.method())
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02)

    def no_share_keys(request: httpx.Request, nxt: Any) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/stages/share-keys"):
            raise httpx.ConnectError("dropped", request=request)
        response: httpx.Response = nxt(request)
        return response

    server = ServerThread(cfg)
    with server as url, httpx.Client(base_url=url, timeout=WAIT_S) as http:
        tc = task_config(
            rounds=1,
            clients_per_round=3,
            over_selection=1.0,
            min_reports=2,
            selection_timeout_s=60.0,
            deadline_s=30.0,
            downlink=CodecParams(topk=1.0, bits=32),
            secure={"coord_fraction": 0.5, "stage_timeout_s": 60.0},
        )
        tid = create_task(http, tc)
        coordinator = server.app.state.coordinator
        clients = [
            Client(url, str(tmp_path / f"d{i}"), mods=(no_share_keys,) if i == 0 else ())
            for i in range(3)
        ]
        for c in clients:
            c.register()
        rid: dict[str, int] = {}

        def run(c: Client) -> None:
            a = await_assignment(c, tid)
            rid["r"] = a.round_id
            try:
                c.secure_round(a, lambda p: (np.full(SPEC.size, 0.01, np.float32), 1, 0.0))
            except ClientError:
                pass  # the device cut off, and the others when their round is cut short

        devices = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
        for t in devices:
            t.start()
        try:
            await_stage(coordinator, tid, Stage.SHARE_KEYS, 2)
            real_clock = coordinator.clock
            coordinator.clock = lambda: real_clock() + tc.deadline_s
            assert held.entered.wait(WAIT_S), "the round never started to close"
            # Execute: the round's status while the close is held
            status = http.get(
                f"/v1/rounds/{rid['r']}", headers={"authorization": f"Bearer {ADMIN}"}
            )
        finally:
            held.release.set()
            for t in devices:
                t.join(WAIT_S)
            for c in clients:
                c.close()
    # Assert: aggregating, and finishing: not the share-keys stage the group was cut short in
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["state"] == "aggregating"
    meas = body["measurements"]
    assert meas["secure"] is True and meas["stage"] == "finishing", meas
    assert meas["stage_uploads"][str(Stage.ADVERTISE_KEYS)] == 3
    assert meas["stage_uploads"][str(Stage.SHARE_KEYS)] == 2
