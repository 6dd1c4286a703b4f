"""A store that fails for a while, then reads again: a task whose rebuild from the store hit the
failure is not refused until a restart. Its requests get 503 `store_unavailable` with
Retry-After meanwhile, a later tick (or a request naming it) rebuilds it once the store reads
again, and its accepted updates count, once. A round whose publish and abandonment both failed
is closed by a later tick (the task rebuilt from the store as a start rebuilds it), not left
`aggregating` until the next start."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from compression import encode_snapshot
from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.errors import ApiError
from coordinator.service.rounds import RELOAD_RETRY_S, Coordinator
from protocol.secagg import Stage

from .test_restart_midround import Clock, _frame, _open_round, _start
from .test_service_support import ADMIN, SPEC, create_task, initial_params, task_config


class FlakyStore:
    """A connection whose statements fail, as a full or failing disk makes them, while
    `failing(sql)` says so: each listed statement kind fails `times` times, then works."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.plan: list[list[Any]] = []  # [which, statements to let pass, then to fail]
        self.failed: list[str] = []

    def fail(self, which: Callable[[str], bool], times: int, skip: int = 0) -> None:
        self.plan.append([which, skip, times])

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        for rule in self.plan:
            which, skip, times = rule
            if times > 0 and which(sql):
                if skip > 0:
                    rule[1] -= 1
                    continue
                rule[2] -= 1
                self.failed.append(sql)
                raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def _commit(sql: str) -> bool:
    return sql == "COMMIT"


def _read(sql: str) -> bool:
    return sql.lstrip().upper().startswith("SELECT")


def _after_commit(flaky: FlakyStore, which: Callable[[str], bool]) -> Callable[[str], bool]:
    """`which`, once a COMMIT has failed (the reads of the rebuild that follows it)."""
    return lambda sql: "COMMIT" in flaky.failed and which(sql)


def _flaky(coord: Coordinator) -> FlakyStore:
    flaky = FlakyStore(coord.store._db)
    coord.store._db = flaky  # type: ignore[assignment]
    return flaky


def _refusal_of(call: Callable[[], Any]) -> ApiError:
    with pytest.raises(ApiError) as err:
        call()
    return err.value


def test_a_read_error_while_reloading_recovers_at_a_later_tick(tmp_path: Path) -> None:
    # Prepare: a round with a and b selected, a's update accepted; b's COMMIT fails, and so
    # does the first read of the rebuild that follows it
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    clock = Clock()
    coord = _start(tmp_path / "plume.db", clock)
    task_id, round_id = _open_round(coord, cfg)
    coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    flaky = _flaky(coord)
    flaky.fail(_commit, 1)
    flaky.fail(_after_commit(flaky, _read), 1)
    with pytest.raises(sqlite3.OperationalError):
        coord.submit(round_id, "b", "key-b", _frame(cfg, 1))
    # Execute: requests before the retry is due, a tick after it
    check_in = _refusal_of(lambda: coord.check_in("b", task_id))
    upload = _refusal_of(lambda: coord.submit(round_id, "b", "key-b", _frame(cfg, 1)))
    retried_a, _ = coord.submit(round_id, "a", "key-a", _frame(cfg, 0))  # stored: answered
    cap = coord.upload_cap_for_round(round_id)
    clock.now += RELOAD_RETRY_S
    coord.tick()
    current = coord.runtimes[task_id].current
    assert current is not None
    resumed = (current.round_id, set(current.uploaded), current.reports)
    receipt, to_close = coord.submit(round_id, "b", "key-b", _frame(cfg, 1))
    assert to_close is not None
    asyncio.run(coord.close_round(to_close))
    status = coord.round_status(round_id)
    # Assert: 503 with Retry-After while down, not task_refused; then the round goes on with
    # a's update counted once and b's retry accepted
    for err in (check_in, upload):
        assert err.status == 503 and err.reason == "store_unavailable", err
        assert err.headers["retry-after"] == str(int(RELOAD_RETRY_S))
        assert "disk I/O error" in err.detail
    assert retried_a.duplicate is True and retried_a.reports == 1
    assert cap == coord.runtimes[task_id].max_upload_bytes
    assert task_id not in coord.refused and task_id not in coord.unloaded
    assert resumed == (round_id, {"a"}, 1)
    assert receipt.duplicate is False and receipt.reports == 2
    assert status.state == "committed" and status.measurements["clients"] == 2
    assert coord.store.count_updates(round_id) == 2


def test_a_request_naming_the_task_reloads_it_once_due(tmp_path: Path) -> None:
    # Prepare: as above, the task not loaded since its rebuild's read failed
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    clock = Clock()
    coord = _start(tmp_path / "plume.db", clock)
    task_id, round_id = _open_round(coord, cfg)
    flaky = _flaky(coord)
    flaky.fail(_commit, 1)
    flaky.fail(_after_commit(flaky, _read), 1)
    with pytest.raises(sqlite3.OperationalError):
        coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    # Execute: two seconds on, then once the retry is due, with no tick in between
    clock.now += 2.0
    early = _refusal_of(lambda: coord.check_in("a", task_id))
    clock.now += RELOAD_RETRY_S
    receipt, _ = coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    # Assert: Retry-After counts down to the next attempt; the upload itself reloaded it
    assert early.status == 503 and early.headers["retry-after"] == str(int(RELOAD_RETRY_S) - 2)
    assert receipt.duplicate is False and receipt.reports == 1
    assert task_id in coord.runtimes and not coord.unloaded


def test_a_store_that_keeps_failing_keeps_the_task_waiting_not_refused(tmp_path: Path) -> None:
    # Prepare
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    clock = Clock()
    coord = _start(tmp_path / "plume.db", clock)
    task_id, round_id = _open_round(coord, cfg)
    flaky = _flaky(coord)
    flaky.fail(_commit, 1)
    flaky.fail(_after_commit(flaky, lambda sql: _read(sql) and "FROM tasks" in sql), 3)
    with pytest.raises(sqlite3.OperationalError):
        coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    # Execute: three ticks, each after the retry is due; the first two fail
    states = []
    for _ in range(3):
        clock.now += RELOAD_RETRY_S
        coord.tick()
        states.append((task_id in coord.unloaded, task_id in coord.runtimes))
    # Assert
    assert states == [(True, False), (True, False), (False, True)]
    assert task_id not in coord.refused
    assert coord.metrics.tasks_unloaded._value.get() == 0


def test_a_damaged_row_found_while_reloading_still_refuses_the_task(tmp_path: Path) -> None:
    # Prepare: the task's stored config no longer parses when the rebuild reads it
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    coord = _start(tmp_path / "plume.db", Clock())
    task_id, round_id = _open_round(coord, cfg)
    with coord.store.transaction() as db:
        db.execute("UPDATE tasks SET config_json='{' WHERE task_id=?", (task_id,))
    flaky = _flaky(coord)
    flaky.fail(_commit, 1)
    # Execute
    with pytest.raises(sqlite3.OperationalError):
        coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    err = _refusal_of(lambda: coord.check_in("a", task_id))
    # Assert: a refusal (409), as at start; not retried
    assert err.status == 409 and err.reason == "task_refused"
    assert task_id in coord.refused and task_id not in coord.unloaded


def test_a_round_whose_publish_and_abandonment_failed_closes_at_a_later_tick(
    tmp_path: Path,
) -> None:
    # Prepare: the reference closes the same round with no failure
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    clock = Clock()
    reference = _start(tmp_path / "ref.db", clock)
    ref_task, ref_round = _open_round(reference, cfg)
    reference.submit(ref_round, "a", "key-a", _frame(cfg, 0))
    _, ref_close = reference.submit(ref_round, "b", "key-b", _frame(cfg, 1))
    assert ref_close is not None
    asyncio.run(reference.close_round(ref_close))
    coord = _start(tmp_path / "plume.db", clock)
    task_id, round_id = _open_round(coord, cfg)
    coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    _, to_close = coord.submit(round_id, "b", "key-b", _frame(cfg, 1))
    assert to_close is not None
    flaky = _flaky(coord)
    # Execute: the close marks the round aggregating, then the publish's COMMIT and the
    # abandonment's are refused
    flaky.fail(_commit, 2, skip=1)
    closed = asyncio.run(coord.close_round(to_close))
    stuck = coord.store.round_state(round_id)
    meanwhile = coord.check_in("c", task_id)
    early = coord.tick()
    clock.now += RELOAD_RETRY_S
    due = coord.tick()
    assert [r.task_id for r in due] == [task_id]
    asyncio.run(coord.close_round(due[0]))
    status = coord.round_status(round_id)
    # Assert: aggregating while the store failed; then closed by a tick, as an uninterrupted
    # run closes it, and the task goes on
    assert closed is None and len(flaky.failed) == 2
    assert stuck == (task_id, "aggregating")
    assert meanwhile.action == "wait" and meanwhile.assignment is None
    assert early == []
    assert status.state == "committed" and status.version_after == 1
    assert status.measurements == reference.round_status(ref_round).measurements
    assert coord.task_status(task_id).model_digest == reference.task_status(ref_task).model_digest
    assert coord.task_status(task_id).rounds_closed == 1


def test_a_secure_round_whose_two_abandonments_failed_is_abandoned_at_a_later_tick(
    tmp_path: Path,
) -> None:
    # Prepare: a secure round of five whose group aborted (nobody advertised its keys)
    clock = Clock()
    coord = Coordinator(
        Store(tmp_path / "p.db"), ServiceConfig(db_path=str(tmp_path / "p.db")), clock=clock
    )
    coord.restore()
    cfg = task_config(
        rounds=2, clients_per_round=5, over_selection=1.0, min_reports=3, deadline_s=600.0,
        secure={"coord_fraction": 0.2, "stage_timeout_s": 300.0},
    )  # fmt: skip
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    devices = [f"{i:032x}" for i in range(5)]
    for d in devices:
        coord.check_in(d, task_id)
    rt = coord.runtimes[task_id]
    assert rt.current is not None and rt.secure is not None
    round_id = rt.current.round_id
    rt.secure.registry.close_stage(round_id, Stage.ADVERTISE_KEYS)
    flaky = _flaky(coord)
    # Execute: the close's abandonment, then fail_close's, are refused
    flaky.fail(_commit, 2, skip=1)
    closed = asyncio.run(coord.close_round(rt))
    stuck = coord.store.round_state(round_id)
    clock.now += RELOAD_RETRY_S
    coord.tick()
    after = coord.store.round_state(round_id)
    status = coord.task_status(task_id)
    for d in devices:
        coord.check_in(d, task_id)
    reopened = coord.runtimes[task_id].current
    # Assert: abandoned by the rebuild (as a start abandons it), and the next round opens
    assert closed is None and len(flaky.failed) == 2
    assert stuck == (task_id, "aggregating")
    assert after == (task_id, "abandoned")
    assert status.rounds_closed == 1 and status.state == "active"
    assert reopened is not None and reopened.round_id != round_id


def test_an_unloaded_tasks_503_carries_retry_after_over_http(tmp_path: Path) -> None:
    # Prepare: a running task of a served coordinator, then a store error stops it
    server = ServerThread(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    auth = {"authorization": f"Bearer {ADMIN}"}
    # Execute
    with server as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config())
        coord: Coordinator = server.app.state.coordinator
        coord._unload(task_id, sqlite3.OperationalError("disk I/O error"))
        status = http.get(f"/v1/admin/tasks/{task_id}", headers=auth)
        pause = http.post(f"/v1/admin/tasks/{task_id}/pause", headers=auth)
        healthz = http.get("/healthz").json()
    # Assert
    for answer in (status, pause):
        assert answer.status_code == 503, answer.text
        assert answer.json()["reason"] == "store_unavailable"
        assert 1 <= int(answer.headers["retry-after"]) <= int(RELOAD_RETRY_S)
        assert f"task {task_id} is not running" in answer.json()["detail"]
    assert healthz["tasks"] == 0
