"""Damaged stored data while the coordinator runs: a refused task's round whose stored JSON no
longer parses is its task's 409 `task_refused` (never a 500), readable where it can be (the
ledger, the upload cap); a damaged database page found by a request is 503 `store_unavailable`
with a log line telling the operator to restore a backup; constraint and programming errors
stay 500."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.errors import ApiError
from coordinator.service.store import DamagedRow
from protocol.messages import to_json
from sdk.client import Client

from .test_restart_midround import Clock, _frame, _open_round, _start
from .test_restart_refused import _rows
from .test_service_review import _signed_get
from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}


def _service(db: Path) -> ServerThread:
    return ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05))


def _stopped_mid_round(db: Path) -> tuple[int, int]:
    """A store whose task stopped with round 1 open, a and b selected and a's update accepted."""
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    coord = _start(db, Clock())
    task_id, round_id = _open_round(coord, cfg)
    coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    coord.store.close()
    return task_id, round_id


def _damage(db: Path, sql: str, *args: Any) -> None:
    con = sqlite3.connect(db)
    con.execute(sql, args)
    con.commit()
    con.close()


@pytest.mark.parametrize(
    ("column", "stored", "words"),
    [
        ("measurements_json", "{oops", "JSONDecodeError"),
        ("selected_json", '{"a": 1}', "a JSON dict, not a list"),
        ("selected_json", "[1, 2]", "not a list of device ids"),
    ],
)
def test_a_refused_tasks_damaged_round_is_409_task_refused_not_500(
    tmp_path: Path, column: str, stored: str, words: str
) -> None:
    # Prepare: the open round's stored JSON is damaged, so the start refuses its task
    db = tmp_path / "plume.db"
    task_id, round_id = _stopped_mid_round(db)
    _damage(db, f"UPDATE rounds SET {column}=? WHERE round_id=?", stored, round_id)
    before = _rows(db, task_id)
    # Execute: every read of the round, as admin and as a device of the round
    with _service(db) as url, httpx.Client(base_url=url) as http:
        device = Client(url, str(tmp_path / "dev"), retries=0)
        device.register()
        path = f"/v1/rounds/{round_id}"
        as_admin = http.get(path, headers=AUTH)
        as_device = http.get(path, headers=_signed_get(device, path, round_id))
        listed = http.get(f"/v1/admin/tasks/{task_id}/rounds", headers=AUTH)
        ledger = http.get(f"/v1/rounds/{round_id}/bandwidth", headers=AUTH)
        status = http.get(f"/v1/admin/tasks/{task_id}", headers=AUTH)
        device.close()
    # Assert: one clear 409 naming the round and the column; the ledger still reads
    for r in (as_admin, as_device, listed):
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["reason"] == "task_refused"
        assert f"task {task_id} is refused" in body["detail"]
        assert f"round {round_id}: its stored {column} does not parse" in body["detail"]
        assert words in body["detail"]
        assert body["detail"].count("does not parse") == 1  # the refusal's own damage, once
    assert "x-plume-ledger-round" not in as_device.headers  # its selection is unreadable
    assert ledger.status_code == 200 and ledger.json()["round_id"] == round_id
    assert status.status_code == 200 and status.json()["state"] == "refused"
    assert _rows(db, task_id) == before


def test_a_damaged_round_of_a_task_refused_for_another_reason_names_both(
    tmp_path: Path,
) -> None:
    # Prepare: the config is refused first (min_reports above clients_per_round), and the
    # round's measurements are damaged too
    db = tmp_path / "plume.db"
    task_id, round_id = _stopped_mid_round(db)
    con = sqlite3.connect(db)
    (raw,) = con.execute("SELECT config_json FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    con.close()
    _damage(
        db,
        "UPDATE tasks SET config_json=? WHERE task_id=?",
        json.dumps(json.loads(raw) | {"min_reports": 5}),
        task_id,
    )
    _damage(db, "UPDATE rounds SET measurements_json='[' WHERE round_id=?", round_id)
    coord = _start(db, Clock())
    # Execute
    with pytest.raises(ApiError) as status:
        coord.round_status(round_id)
    with pytest.raises(ApiError) as upload:
        coord.submit(round_id, "b", "key-b", b"\0" * 16)
    cap = coord.upload_cap_for_round(round_id)
    member = coord.in_round(round_id, "a")
    coord.store.close()
    # Assert: the refusal's reason, then the round's damage; an upload is refused before any
    # JSON is read; the cap comes from the task's config (an upload is read, then refused)
    assert (status.value.status, status.value.reason) == (409, "task_refused")
    assert "min_reports" in status.value.detail
    assert f"round {round_id}: its stored measurements_json does not parse" in status.value.detail
    assert (upload.value.status, upload.value.reason) == (409, "task_refused")
    assert cap is not None and cap > 0
    assert member is False


def test_pause_resume_and_rounds_of_a_task_whose_config_is_not_json_answer_clearly(
    tmp_path: Path,
) -> None:
    # Prepare: a stored task whose config is not JSON (refused at start)
    db = tmp_path / "plume.db"
    task_id, _ = _stopped_mid_round(db)
    _damage(db, "UPDATE tasks SET config_json='{\"name\": ' WHERE task_id=?", task_id)
    # Execute
    with _service(db) as url, httpx.Client(base_url=url) as http:
        pause = http.post(f"/v1/admin/tasks/{task_id}/pause", headers=AUTH)
        resume = http.post(f"/v1/admin/tasks/{task_id}/resume", headers=AUTH)
        rounds = http.get(f"/v1/admin/tasks/{task_id}/rounds", headers=AUTH)
        unknown = http.get("/v1/admin/tasks/99/rounds", headers=AUTH)
    # Assert: 409 task_refused (was a 500 from parsing the config first); rounds still read
    for r in (pause, resume):
        assert r.status_code == 409 and r.json()["reason"] == "task_refused", r.text
    assert rounds.status_code == 200 and [s["state"] for s in rounds.json()] == ["open"]
    assert unknown.status_code == 404 and unknown.json()["reason"] == "unknown_task"


def test_a_row_of_a_task_not_refused_damaged_under_it_is_503_not_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a task the start accepted; its round's row is edited while the service runs
    db = tmp_path / "plume.db"
    with _service(db) as url, httpx.Client(base_url=url) as http:
        r = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH)
        task_id = int(r.json()["task_id"])
        store: Store = Store(db)
        round_id = store.open_round(task_id, 1, 0, ["a"], 1, 1, 0.0, 1.0)
        store.close()
        _damage(db, "UPDATE rounds SET selected_json='nope' WHERE round_id=?", round_id)
        caplog.set_level(logging.ERROR, logger="plume.coordinator")
        # Execute
        status = http.get(f"/v1/rounds/{round_id}", headers=AUTH)
    # Assert: unavailable with a sentence, and the operator told what to do
    assert status.status_code == 503, status.text
    assert status.json()["reason"] == "store_unavailable"
    assert "selected_json does not parse" in status.json()["detail"]
    assert status.headers["retry-after"] == "60"
    assert any("restore a backup" in rec.getMessage() for rec in caplog.records)


def test_damaged_row_message_names_the_row() -> None:
    # Prepare / Execute
    err = DamagedRow("rounds", 7, 3, "measurements_json", "JSONDecodeError: x")
    # Assert
    assert str(err) == "round 7: its stored measurements_json does not parse (JSONDecodeError: x)"
    assert isinstance(err, ValueError) and err.task_id == 3


def _corrupt_ledger(db: Path) -> int:
    """A store with one round and a ledger spanning pages, then its ledger's root page
    overwritten with garbage: the file still opens (the start check reads other pages)."""
    store = Store(db)
    round_id = store.open_round(1, 1, 0, ["a"], 1, 1, 0.0, 1.0)
    store.ledger_add([(round_id, f"dev{i:04d}", "up", 1, 2, 3) for i in range(300)])
    store.close()
    con = sqlite3.connect(db)
    (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name='ledger'").fetchone()
    (page,) = con.execute("PRAGMA page_size").fetchone()
    con.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xff" * page)
    return round_id


def test_a_damaged_database_page_found_while_running_is_503_with_restore_advice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a really damaged page, found only when a request reads it
    db = tmp_path / "plume.db"
    round_id = _corrupt_ledger(db)
    caplog.set_level(logging.ERROR, logger="plume.coordinator")
    # Execute
    with _service(db) as url, httpx.Client(base_url=url) as http:
        ledger = http.get(f"/v1/rounds/{round_id}/bandwidth", headers=AUTH)
        health = http.get("/healthz")
    # Assert: 503 store_unavailable, a long Retry-After, one log line telling what to do
    assert ledger.status_code == 503, ledger.text
    assert ledger.json()["reason"] == "store_unavailable"
    assert "database disk image is malformed" in ledger.json()["detail"]
    assert ledger.headers["retry-after"] == "60"
    assert health.status_code == 200  # the rest of the service still answers
    lines = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(lines) == 1 and "restore a backup" in lines[0] and str(db) in lines[0]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (sqlite3.DatabaseError("database disk image is malformed"), 503),
        (sqlite3.DatabaseError("file is not a database"), 503),
        (sqlite3.IntegrityError("UNIQUE constraint failed: tasks.task_id"), 500),
        (sqlite3.ProgrammingError("Incorrect number of bindings supplied"), 500),
    ],
)
def test_only_damage_is_503_a_bug_stays_500(
    tmp_path: Path, error: sqlite3.DatabaseError, status: int
) -> None:
    # Prepare: the store's task read raises `error`
    server = _service(tmp_path / "plume.db")
    store = server.app.state.store

    def failing(*args: Any, **kw: Any) -> Any:
        raise error

    # Execute
    with server as url, httpx.Client(base_url=url) as http:
        created = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH)
        store.task = failing
        # A 500 may close the connection: its own client
        r = httpx.get(url + f"/v1/admin/tasks/{created.json()['task_id']}", headers=AUTH)
    # Assert
    assert r.status_code == status, r.text
    if status == 503:
        assert r.json()["reason"] == "store_unavailable" and str(error) in r.json()["detail"]
