"""Each round's outcome is logged on `plume.coordinator`, as its "round opened" line is: the
version a committed round published, why an abandoned one was abandoned (the reason its status
records), and a line when the task is done. Before, only "opened" was logged: a two-round run
logged two "opened" lines and nothing of either outcome (found by helper-181)."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import CodecParams
from protocol.secagg import Stage
from sdk.client import Client

from .test_service_secure import STAGE_TIMEOUT_S
from .test_service_support import (
    ADMIN,
    SPEC,
    SoftmaxTrainer,
    admin_get,
    await_assignment,
    create_task,
    device_client,
    drive_stages,
    expire_stage,
    local_data,
    serve_fast,
    task_config,
    wait_until,
)

served = pytest.fixture(serve_fast, name="served")


@pytest.fixture()
def server(served: ServerThread) -> str:
    return served.url


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "plume.coordinator"]


def _clients(url: str, root: Path, n: int) -> list[Client]:
    clients = [device_client(url, str(root / f"dev{i}")) for i in range(n)]
    for c in clients:
        c.register()
    return sorted(clients, key=lambda c: c.device_id)


def test_committed_rounds_and_the_done_task_are_logged(
    server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: two rounds of two devices
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=2, clients_per_round=2, min_reports=2))
        clients = _clients(server, tmp_path, 2)
        errors: list[BaseException] = []

        def run(i: int) -> None:
            x, y = local_data(i)
            try:
                for _ in range(2):
                    clients[i].participate(SoftmaxTrainer(), x, y, task_id=task_id, max_wait_s=30)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        # Execute
        with caplog.at_level(logging.INFO, logger="plume.coordinator"):
            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            status = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done", timeout=60)
        rounds = admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")
        # Assert: each round's "committed" line names its version, reports and cohort; then "done"
        assert not errors, errors
        assert status["state"] == "done" and status["version"] == 2
        lines = _lines(caplog)
        committed = [m for m in lines if " committed " in m]
        assert len(committed) == 2, lines
        for n, (line, r) in enumerate(zip(committed, rounds, strict=True), start=1):
            pattern = (
                rf"task {task_id} round {r['round_id']} committed model version {n} from 2 "
                rf"reports of 2 selected devices \((\d+) update bytes, a (\d+)-byte downlink "
                rf"delta\); {n} of the task's 2 rounds closed"
            )
            m = re.fullmatch(pattern, line)
            assert m is not None, line
            up = admin_get(http, f"/v1/rounds/{r['round_id']}/bandwidth")["totals"]
            assert int(m.group(1)) == up["up_payload_bytes"]  # the accepted frames' bytes
            assert int(m.group(2)) == r["measurements"]["downlink_frame_bytes"]
        done = [m for m in lines if " done" in m]
        assert done == [
            f"task {task_id} done: 2 of its 2 rounds closed, 2 committed; model version 2 is final"
        ]
        # In order: opened, committed, opened, committed, done
        events = [re.search(r" (opened|committed|done)\b", m) for m in lines]
        assert [e.group(1) for e in events if e is not None] == [
            "opened", "committed", "opened", "committed", "done",
        ]  # fmt: skip


def test_a_round_abandoned_at_its_deadline_logs_the_reason(
    served: ServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: one round of two devices, both needed (min_reports 2), a 10 s deadline; device
    # `idle` is selected but never uploads
    server = served.url
    coordinator = served.app.state.coordinator
    real_clock = coordinator.clock
    with httpx.Client(base_url=server) as http:
        cfg = task_config(rounds=1, clients_per_round=2, min_reports=2, deadline_s=10.0)
        task_id = create_task(http, cfg)
        idle, worker = _clients(server, tmp_path, 2)
        x, y = local_data(0)
        # Execute: `idle` waits in the pool; `worker`'s check-in opens the round and it uploads
        with caplog.at_level(logging.INFO, logger="plume.coordinator"):
            assert idle.check_in(task_id).assignment is None
            report = worker.participate(SoftmaxTrainer(), x, y, task_id=task_id, max_wait_s=30)
            assert report is not None
            # The deadline passes on the coordinator's clock (its ticker closes the round there),
            # without waiting 10 s out
            coordinator.clock = lambda: real_clock() + cfg.deadline_s
            status = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done", timeout=60)
        (r,) = admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")
        # Assert: the line carries the reason the round's status records, and the task's end
        assert status["state"] == "done" and status["version"] == 0
        assert r["state"] == "abandoned" and r["reports"] == 1
        reason = r["measurements"]["abandoned"]
        assert reason == "1 reports < min_reports 2"
        lines = _lines(caplog)
        assert [m for m in lines if " abandoned" in m] == [
            f"task {task_id} round {r['round_id']} abandoned: {reason} (1 reports of 2 selected "
            "devices, at its deadline); 1 of the task's 1 rounds closed"
        ]
        assert [m for m in lines if " done" in m] == [
            f"task {task_id} done: 1 of its 1 rounds closed, 0 committed; model version 0 is final"
        ]


def test_a_secure_round_logs_its_outcome(
    served: ServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a secure round of 4 devices (3 needed); one drops before share-keys, and that
    # stage times out on the test's clock once the other three uploaded it (a stage every
    # device uploads closes at once: the 60 s timeout is never reached)
    import numpy as np

    server = served.url
    with httpx.Client(base_url=server) as http:
        cfg = task_config(
            rounds=1, clients_per_round=4, over_selection=1.0, min_reports=3,
            selection_timeout_s=60.0, deadline_s=60.0, seed=7,
            downlink=CodecParams(topk=1.0, bits=32),
            secure={"coord_fraction": 0.5, "stage_timeout_s": STAGE_TIMEOUT_S},
        )  # fmt: skip
        task_id = create_task(http, cfg)
        coordinator = served.app.state.coordinator
        clock = drive_stages(coordinator, task_id)
        clients = _clients(server, tmp_path, 4)
        dropped = clients[0].device_id
        errors: list[BaseException] = []

        def run(c: Client) -> None:
            try:
                a = await_assignment(c, task_id, timeout=60)
                delta = np.random.default_rng(int(c.device_id[:12], 16)).normal(0, 0.05, SPEC.size)
                c.secure_round(
                    a, lambda params: (delta.astype(np.float32), 1, 0.0),
                    drop_at=Stage.SHARE_KEYS if c.device_id == dropped else None,
                )  # fmt: skip
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        # Execute
        with caplog.at_level(logging.INFO, logger="plume.coordinator"):
            threads = [threading.Thread(target=run, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            try:
                expire_stage(coordinator, task_id, clock, Stage.SHARE_KEYS, 3)
            finally:
                for t in threads:
                    t.join(120)
            status = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done", timeout=60)
        (r,) = admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")
        # Assert
        assert not errors, errors
        assert status["version"] == 1 and r["state"] == "committed"
        assert r["measurements"]["dropped"] == [dropped]
        lines = _lines(caplog)
        assert [m for m in lines if " committed " in m] == [
            f"task {task_id} secure round {r['round_id']} committed model version 1 from 3 reports "
            f"of 4 selected devices (1 dropped, a {r['measurements']['downlink_frame_bytes']}-byte "
            "downlink delta); 1 of the task's 1 rounds closed"
        ]
        assert [m for m in lines if " done" in m] == [
            f"task {task_id} done: 1 of its 1 rounds closed, 1 committed; model version 1 is final"
        ]


def test_a_failed_last_round_ends_the_task_and_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a one-round task whose close raises (as an aggregator bug would). Before, the
    # round was abandoned but the task stayed `active` for good, with no round left to open,
    # its devices told to wait
    from coordinator.service.rounds import Coordinator

    def boom(self: Coordinator, *args: object, **kwargs: object) -> object:
        raise RuntimeError("boom: a bug in an aggregator")

    monkeypatch.setattr(Coordinator, "close_blocking", boom)
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    x, y = local_data(0)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(clients_per_round=1, rounds=1))
        with Client(url, str(tmp_path / "dev")) as device:
            device.register()
            # Execute
            with caplog.at_level(logging.INFO, logger="plume.coordinator"):
                report = device.participate(SoftmaxTrainer(), x, y, task_id=task_id, max_wait_s=30)
                assert report is not None
                status = wait_until(http, f"/v1/admin/tasks/{task_id}", "rounds_closed", 1, 60)
            answer = device.check_in(task_id)
        (r,) = admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")
    # Assert: the task is done (a device is told so), and both lines are logged
    assert status["state"] == "done" and status["version"] == 0, status
    assert answer.action == "end", answer
    assert r["state"] == "abandoned"
    error = r["measurements"]["error"]
    assert error == "RuntimeError('boom: a bug in an aggregator')"
    lines = _lines(caplog)
    assert [m for m in lines if " abandoned" in m] == [
        f"task {task_id} round {r['round_id']} abandoned: {error} (its close failed; the task "
        "is rebuilt from the store)"
    ]
    assert [m for m in lines if " done" in m] == [
        f"task {task_id} done: 1 of its 1 rounds closed, 0 committed; model version 0 is final"
    ]
