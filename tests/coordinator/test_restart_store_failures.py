"""The database failing while the coordinator runs: a COMMIT refused after the engine took an
upload leaves memory and store agreeing (the retry is accepted, counted once); the HTTP API
answers 503 `store_unavailable` with Retry-After, not a 500; a constraint bug stays a 500."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import to_json

from .test_restart_midround import Clock, _frame, _open_round, _start
from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}


class FailingCommit:
    """A connection whose next `failures` COMMITs are refused as by a full disk."""

    def __init__(self, db: sqlite3.Connection, failures: int) -> None:
        self.db = db
        self.failures = failures

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_a_refused_upload_commit_leaves_nothing_held_and_the_retry_counts_once(
    tmp_path: Path,
) -> None:
    # Prepare: a round with a and b selected; the next COMMIT fails
    cfg = task_config(rounds=1, clients_per_round=2, selection_timeout_s=30)
    coord = _start(tmp_path / "plume.db", Clock())
    task_id, round_id = _open_round(coord, cfg)
    real = coord.store._db
    coord.store._db = FailingCommit(real, 1)  # type: ignore[assignment]
    # Execute: a's upload hits the failed COMMIT, then a retries
    with pytest.raises(sqlite3.OperationalError):
        coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    stored_after_failure = coord.store.count_updates(round_id)
    retry, _ = coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    _, to_close = coord.submit(round_id, "b", "key-b", _frame(cfg, 1))
    assert to_close is not None
    asyncio.run(coord.close_round(to_close))
    # Assert: nothing stored or held after the failure; the retry is a fresh acceptance
    assert stored_after_failure == 0
    assert retry.duplicate is False and retry.reports == 1
    status = coord.round_status(round_id)
    assert status.state == "committed" and status.measurements["clients"] == 2
    assert coord.store.count_updates(round_id) == 2
    assert not real.in_transaction


def test_a_failing_database_answers_503_store_unavailable(tmp_path: Path) -> None:
    # Prepare: the service's store refuses task creation as a locked, then a buggy, database
    server = ServerThread(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    store = server.app.state.store
    original = store.create_task

    def locked(*args: Any, **kw: Any) -> int:
        raise sqlite3.OperationalError("database is locked")

    def constraint(*args: Any, **kw: Any) -> int:
        raise sqlite3.IntegrityError("UNIQUE constraint failed: tasks.task_id")

    body = to_json(task_config())
    # Execute
    with server as url, httpx.Client(base_url=url) as http:
        store.create_task = locked
        unavailable = http.post("/v1/admin/tasks", json=body, headers=AUTH)
        store.create_task = constraint
        bug = httpx.post(url + "/v1/admin/tasks", json=body, headers=AUTH)  # own connection
        store.create_task = original
        created = http.post("/v1/admin/tasks", json=body, headers=AUTH)
    # Assert: 503 with a sentence and Retry-After; a constraint bug is not disguised
    assert unavailable.status_code == 503 and unavailable.headers["retry-after"] == "5"
    assert unavailable.json()["reason"] == "store_unavailable"
    assert "database is locked" in unavailable.json()["detail"]
    assert bug.status_code == 500
    assert created.status_code == 201
