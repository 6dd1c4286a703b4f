"""Restart on a store holding a task this coordinator refuses: the coordinator starts, the other
tasks run, the refused one is reported (status, list, healthz, metrics, one log line), device
and admin requests for it get 409 `task_refused`, and its rows stay byte for byte as stored."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from coordinator.service import AdminClient, ServerThread, ServiceConfig
from protocol.messages import TaskStatus, from_json, to_json
from sdk.client import Client, ClientError

from .test_service_support import (
    ADMIN,
    SPEC,
    SoftmaxTrainer,
    admin_get,
    create_task,
    device_client,
    local_data,
    task_config,
    wait_until,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}


def _service(db: Path) -> ServerThread:
    return ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02))


def _rows(db: Path, task_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row of a task (blobs included), to compare byte for byte."""
    con = sqlite3.connect(db)
    try:
        return {
            "tasks": con.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchall(),
            "versions": con.execute(
                "SELECT * FROM versions WHERE task_id=? ORDER BY version", (task_id,)
            ).fetchall(),
            "rounds": con.execute(
                "SELECT * FROM rounds WHERE task_id=? ORDER BY seq", (task_id,)
            ).fetchall(),
            "updates": con.execute(
                "SELECT u.* FROM updates u JOIN rounds r USING (round_id) WHERE r.task_id=? "
                "ORDER BY u.seq",
                (task_id,),
            ).fetchall(),
        }
    finally:
        con.close()


def _edit_config(db: Path, task_id: int, edit: Any) -> None:
    """Rewrite a stored task's config_json as an older or damaged store would hold it."""
    con = sqlite3.connect(db)
    (raw,) = con.execute("SELECT config_json FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    new = edit(raw)
    con.execute("UPDATE tasks SET config_json=? WHERE task_id=?", (new, task_id))
    con.commit()
    con.close()


def _two_tasks(db: Path, **bad_over: Any) -> tuple[int, int]:
    """A store with a one-round good task and a second task, both with a model."""
    with _service(db) as url, httpx.Client(base_url=url) as http:
        good = create_task(http, task_config(rounds=1, selection_timeout_s=30))
        bad = create_task(http, task_config(name="bad", **bad_over))
    return good, bad


def _participate(url: str, root: Path, task_id: int, n: int = 2) -> None:
    def run(i: int) -> None:
        with Client(url, str(root / f"dev{i}")) as c:  # closed: the next call's may open
            c.register()
            c.participate(SoftmaxTrainer(), *local_data(i), task_id=task_id, max_wait_s=30)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def _refusal(r: httpx.Response, task_id: int) -> str:
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["reason"] == "task_refused"
    assert f"task {task_id} is refused" in body["detail"]
    return str(body["detail"])


def test_a_refused_task_does_not_stop_the_others_and_is_kept_as_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: task 2's stored aggregator is one this code refuses
    db = tmp_path / "plume.db"
    good, bad = _two_tasks(db)
    _edit_config(db, bad, lambda raw: json.dumps(json.loads(raw) | {"aggregator": "nosuch:3"}))
    before = _rows(db, bad)
    # Execute: start on that store, run the good task's round, poke the refused one
    caplog.set_level(logging.ERROR, logger="plume.coordinator")
    with _service(db) as url, httpx.Client(base_url=url) as http:
        health = http.get("/healthz").json()
        status = admin_get(http, f"/v1/admin/tasks/{bad}")
        listed = admin_get(http, "/v1/admin/tasks")
        with AdminClient(url, ADMIN) as admin:
            typed = admin.tasks()
        metrics = http.get("/metrics").text
        resume = http.post(f"/v1/admin/tasks/{bad}/resume", headers=AUTH)
        pause = http.post(f"/v1/admin/tasks/{bad}/pause", headers=AUTH)
        device = device_client(url, str(tmp_path / "probe"), retries=0)
        device.register()
        with pytest.raises(ClientError) as check_in_refused:
            device.check_in(bad)
        with pytest.raises(ClientError) as model_refused:
            device.fetch_current(bad, SPEC)
        _participate(url, tmp_path, good)
        done = wait_until(http, f"/v1/admin/tasks/{good}", "state", "done")
    # Assert: the good task ran its round; the refused one is reported everywhere
    assert done["version"] == 1 and done["rounds_committed"] == 1
    assert health["tasks"] == 1 and health["tasks_refused"] == 1
    assert status["state"] == "refused" and "nosuch" in status["refused"]
    assert status["config"]["aggregator"] == "nosuch:3" and status["version"] == 0
    assert from_json(TaskStatus, status).refused == status["refused"]
    assert [t.refused for t in typed] == [None, status["refused"]]
    assert [(t["task_id"], t["state"]) for t in listed] == [(good, "active"), (bad, "refused")]
    assert listed[0]["refused"] is None
    assert "plume_tasks_refused 1.0" in metrics
    _refusal(resume, bad)
    _refusal(pause, bad)
    for err in (check_in_refused.value, model_refused.value):
        assert (err.status, err.reason) == (409, "task_refused") and "nosuch" in err.detail
    refused_logs = [r for r in caplog.records if f"task {bad} in the store is refused" in r.message]
    assert len(refused_logs) == 1 and "nosuch" in refused_logs[0].getMessage()
    assert _rows(db, bad) == before


def test_device_requests_for_a_refused_task_get_409_not_500(tmp_path: Path) -> None:
    # Prepare: the refused task stopped mid-round with one update accepted
    db = tmp_path / "plume.db"
    with _service(db) as url, httpx.Client(base_url=url) as http:
        bad = create_task(http, task_config(rounds=2, selection_timeout_s=30))
        a, b = (device_client(url, str(tmp_path / d), retries=0) for d in ("a", "b"))
        a.register()
        b.register()
        a.check_in(bad)
        assignment = b.check_in(bad).assignment
        assert assignment is not None  # the pool held the full cohort: round 1 opened
        params, _ = b.fetch_model(assignment)
        x, y = local_data(1)
        trained = SoftmaxTrainer().train(
            params, x, y, epochs=1, batch_size=10, lr=0.1, rng=np.random.default_rng(1)
        )
        b.upload(b._core.encode(assignment, SPEC, params, trained.params, 40), SPEC)
        round_id = assignment.round_id
    _edit_config(db, bad, lambda raw: json.dumps(json.loads(raw) | {"min_reports": 5}))
    before = _rows(db, bad)
    assert len(before["updates"]) == 1 and before["rounds"][0][3] == "open"
    # Execute
    with _service(db) as url, httpx.Client(base_url=url) as http:
        a.close()  # the app restarts too (one client per app_dir in a process)
        a = device_client(url, str(tmp_path / "a"), retries=0)
        with pytest.raises(ClientError) as model_refused:
            a.fetch_model(assignment)
        with pytest.raises(ClientError) as upload_refused:
            a.upload(a._core.encode(assignment, SPEC, params, trained.params, 40), SPEC)
        round_status = admin_get(http, f"/v1/rounds/{round_id}")
        rounds = admin_get(http, f"/v1/admin/tasks/{bad}/rounds")
        status = admin_get(http, f"/v1/admin/tasks/{bad}")
    # Assert: clear 409s, the round is readable as stored, nothing written
    for err in (model_refused.value, upload_refused.value):
        assert (err.status, err.reason) == (409, "task_refused"), err
        assert "min_reports" in str(err)
    assert round_status["state"] == "open" and round_status["reports"] == 1
    assert [r["round_id"] for r in rounds] == [round_id]
    assert status["state"] == "refused" and status["current_round"] is None
    assert _rows(db, bad) == before


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("not json", "JSONDecodeError"),
        ("missing field", "missing field 'rounds'"),
        ("digest", "do not match the stored model digest"),
    ],
)
def test_a_damaged_task_row_is_refused_and_reported(
    tmp_path: Path, damage: str, words: str
) -> None:
    # Prepare
    db = tmp_path / "plume.db"
    good, bad = _two_tasks(db)
    con = sqlite3.connect(db)
    if damage == "not json":
        con.execute("UPDATE tasks SET config_json='{\"name\": ' WHERE task_id=?", (bad,))
    elif damage == "missing field":
        (raw,) = con.execute("SELECT config_json FROM tasks WHERE task_id=?", (bad,)).fetchone()
        doc = json.loads(raw)
        del doc["rounds"]
        con.execute("UPDATE tasks SET config_json=? WHERE task_id=?", (json.dumps(doc), bad))
    else:
        con.execute("UPDATE tasks SET digest=? WHERE task_id=?", ("00" * 32, bad))
    con.commit()
    con.close()
    before = _rows(db, bad)
    # Execute
    with _service(db) as url, httpx.Client(base_url=url) as http:
        status = admin_get(http, f"/v1/admin/tasks/{bad}")
        listed = admin_get(http, "/v1/admin/tasks")
        good_status = admin_get(http, f"/v1/admin/tasks/{good}")
    # Assert
    assert status["state"] == "refused" and words in status["refused"], status
    assert [t["state"] for t in listed] == ["active", "refused"]
    assert good_status["state"] == "active"
    if damage == "missing field":
        assert status["config"]["name"] == "bad" and "rounds" not in status["config"]
    if damage == "not json":
        assert status["config"] == {}
    assert _rows(db, bad) == before


def test_a_task_awaiting_its_model_with_a_refused_config_is_refused(tmp_path: Path) -> None:
    # Prepare: a task created but never given its model, whose config no longer validates
    db = tmp_path / "plume.db"
    with _service(db) as url, httpx.Client(base_url=url) as http:
        r = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH)
        assert r.status_code == 201, r.text
        task_id = int(r.json()["task_id"])
    _edit_config(db, task_id, lambda raw: json.dumps(json.loads(raw) | {"rounds": 0}))
    before = _rows(db, task_id)
    # Execute
    with _service(db) as url, httpx.Client(base_url=url) as http:
        status = admin_get(http, f"/v1/admin/tasks/{task_id}")
        put = http.put(
            f"/v1/admin/tasks/{task_id}/model",
            content=b"\0" * 16,
            headers={**AUTH, "content-type": "application/octet-stream"},
        )
    # Assert
    assert status["state"] == "refused" and "rounds must be in" in status["refused"]
    assert status["version"] == -1
    _refusal(put, task_id)
    assert _rows(db, task_id) == before
