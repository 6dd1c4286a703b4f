"""A secure task whose last released round was stored without its `budget_exhausted` flag (a
round kept through its `pending_dp`: a publish that failed after unmasking, or a stop while
closing) is stopped at start from the replayed ledger, instead of opening a round every tick
that the secure coordinator refuses (`BudgetExhausted`) until its rounds run out (helper-205's
review of 3426d5d)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from coordinator.secure import SecureCoordinator
from sdk.client import Client

from ._secure_service import fast_service, metric, secure_round_of
from .test_h204_secure_budget_service import _epsilons, _no_assignment, _task
from .test_service_support import admin_get, create_task, wait_until


def _as_if_stored_through_pending_dp(db: Path, task_id: int) -> None:
    """Round 1 without its dp record's budget_exhausted flag, and the task active again."""
    with sqlite3.connect(db) as con:
        (raw,) = con.execute("SELECT measurements_json FROM rounds WHERE seq=1").fetchone()
        meas = json.loads(raw)
        meas["dp"].pop("budget_exhausted")
        meas["dp"].pop("epsilon_budget", None)
        con.execute("UPDATE rounds SET measurements_json=? WHERE seq=1", (json.dumps(meas),))
        con.execute("UPDATE tasks SET state='active' WHERE task_id=?", (task_id,))
    con.close()


def _spent_then_flag_lost(tmp_path: Path, db: Path) -> int:
    """A secure task whose budget the first round fits and no second round can, run to done
    (round 1 released), then stored as if round 1 had gone through `pending_dp`; its id."""
    one, floor, _ = _epsilons()
    with fast_service(db) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, _task((one + floor) / 2))
        clients = [Client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
        for c in clients:
            c.register()
        assert all(r.completed for r in secure_round_of(clients, task_id))
        wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        for c in clients:
            c.close()
    _as_if_stored_through_pending_dp(db, task_id)
    return task_id


def _rounds_of(db: Path, task_id: int) -> int:
    with sqlite3.connect(db) as con:
        (n,) = con.execute("SELECT COUNT(*) FROM rounds WHERE task_id=?", (task_id,)).fetchone()
    con.close()
    return int(n)


def test_a_spent_budget_without_its_flag_still_stops_the_task_at_start(tmp_path: Path) -> None:
    # Prepare: a budget the first round fits and no second round can; round 1 released
    db = tmp_path / "plume.db"
    task_id = _spent_then_flag_lost(tmp_path, db)
    # Execute: a start with the flag gone
    with fast_service(db) as url, httpx.Client(base_url=url) as http:
        clients = [Client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
        _no_assignment(clients, task_id)
        task = admin_get(http, f"/v1/admin/tasks/{task_id}")
        metrics = http.get("/metrics").text
        for c in clients:
            c.close()
    opened = _rounds_of(db, task_id)
    # Assert: no round opened after round 1 (before: one abandoned per tick until 5), done,
    # and the gauge says the budget is spent
    assert opened == 1
    assert task["state"] == "done"
    assert metric(metrics, "plume_dp_budget_exhausted", task_id) == 1.0


def test_a_round_refused_at_open_for_the_budget_ends_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The restore's check is made to miss once (as a ledger it could not read would), so the
    # first open meets SecureCoordinator's own refusal (BudgetExhausted): that ends the task,
    # where before each tick opened and abandoned another round until the task's 5 were used.
    db = tmp_path / "plume.db"
    task_id = _spent_then_flag_lost(tmp_path, db)
    real = SecureCoordinator.budget_exhausted
    calls = {"n": 0}

    def misses_once(self: SecureCoordinator) -> bool:
        calls["n"] += 1
        return False if calls["n"] == 1 else real(self)

    monkeypatch.setattr(SecureCoordinator, "budget_exhausted", misses_once)
    # Execute
    with fast_service(db) as url, httpx.Client(base_url=url) as http:
        clients = [Client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
        _no_assignment(clients, task_id)
        task = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        round2 = admin_get(http, "/v1/rounds/2")
        metrics = http.get("/metrics").text
        for c in clients:
            c.close()
    opened = _rounds_of(db, task_id)
    # Assert: one round refused at open, marked; then done
    assert opened == 2 and task["state"] == "done"
    assert round2["measurements"]["budget_exhausted"] is True
    assert metric(metrics, "plume_dp_budget_exhausted", task_id) == 1.0
