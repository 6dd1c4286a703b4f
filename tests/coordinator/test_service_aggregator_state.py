"""A stateful aggregator's state survives a coordinator restart: the central-DP round count (so
epsilon keeps growing) and a robust screen's server momentum."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from coordinator.aggregators import decode_state, encode_state
from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    admin_get,
    create_task,
    device_client,
    local_data,
    task_config,
    wait_until,
)

# population=2: the two devices of `_one_round` (a larger population= would wait for that many
# devices in the selection pool; the service refuses q=, Poisson, as it selects fixed-size
# cohorts).
DP_FIXED = "dp:clip=1,z=1,population=2,sample=2,delta=1e-5,seed=3+fedavg"
DP = DP_FIXED


def _service(db: Path) -> ServerThread:
    cfg = ServiceConfig(
        db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02, allow_seeded_dp=True
    )  # its DP task is seeded, for repeatable noise
    return ServerThread(cfg)


def _one_round(url: str, tmp_path: Path, task_id: int, version: int) -> None:
    """Two devices check in together and report once; wait until the task reaches `version`."""

    def run(i: int) -> None:
        with Client(url, str(tmp_path / f"dev{i}")) as c:  # closed: the next round's may open
            c.register()
            c.participate(SoftmaxTrainer(), *local_data(i), task_id=task_id, max_wait_s=60)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    status = wait_until(url, f"/v1/admin/tasks/{task_id}", "version", version, timeout=60)
    assert status["version"] == version, status


def _dp(url: str, round_id: int) -> dict[str, float]:
    """The round's central-DP accounting (DPMean's measurements)."""
    meas = admin_get(url, f"/v1/rounds/{round_id}")["measurements"]
    return {"rounds": meas["rounds"], "epsilon": meas["epsilon"]}


@pytest.mark.parametrize("restart", [False, True])
def test_central_dp_epsilon_keeps_counting_across_a_restart(tmp_path: Path, restart: bool) -> None:
    # Prepare: a two-round task under central DP; with `restart`, the service stops in between.
    db = tmp_path / "plume.db"
    with _service(db) as url:
        task_id = create_task(url, task_config(rounds=2, aggregator=DP))
        _one_round(url, tmp_path, task_id, 1)
        first = _dp(url, 1)
        if not restart:
            _one_round(url, tmp_path, task_id, 2)
            second = _dp(url, 2)
    if restart:
        # Execute: a new process would see exactly this database.
        with _service(db) as url:
            _one_round(url, tmp_path, task_id, 2)
            second = _dp(url, 2)

    # Assert: round 2 is accounted as the second round either way; before aggregator state
    # was persisted, a restart started the count again (rounds 1, the first round's epsilon).
    assert first["rounds"] == 1 and second["rounds"] == 2
    assert second["epsilon"] > first["epsilon"]


def test_the_dp_gauges_read_the_spent_epsilon_right_after_a_restart(tmp_path: Path) -> None:
    # Prepare: one committed central-DP round, then a restart
    db = tmp_path / "plume.db"
    with _service(db) as url:
        task_id = create_task(url, task_config(rounds=3, aggregator=DP_FIXED))
        _one_round(url, tmp_path, task_id, 1)
        first = _dp(url, 1)
    # Execute: scrape the restarted service before any new round
    with _service(db) as url:
        metrics = httpx.get(f"{url}/metrics").text
    # Assert: the gauges read round 1's accounting, not zeros
    lines = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith("plume_dp_") and f'task="{task_id}"' in line
    }
    assert lines[f'plume_dp_epsilon{{task="{task_id}"}}'] == pytest.approx(first["epsilon"])
    assert lines[f'plume_dp_rounds{{task="{task_id}"}}'] == 1.0


def test_the_store_keeps_the_state_of_the_last_committed_round(tmp_path: Path) -> None:
    # Prepare: a robust screen with server momentum, one committed round.
    db = tmp_path / "plume.db"
    with _service(db) as url:
        task_id = create_task(url, task_config(rounds=3, aggregator="cosfilter+geomed"))
        _one_round(url, tmp_path, task_id, 1)
    # Execute
    store = Store(db)
    blob = store.task_aggregator_state(task_id)
    store.close()
    # Assert: the momentum of one round's aggregate is there, and it decodes exactly.
    assert blob is not None
    momentum, _inner = decode_state(blob)
    assert momentum.shape == (170,) and momentum.any()
    assert encode_state(decode_state(blob)) == blob


def test_a_version_1_database_gains_the_column_and_keeps_its_tasks(tmp_path: Path) -> None:
    # Prepare: the version-1 tasks table (no agg_state) with one task in it.
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE tasks (task_id INTEGER PRIMARY KEY AUTOINCREMENT, config_json TEXT NOT NULL,
            state TEXT NOT NULL, version INTEGER NOT NULL DEFAULT -1, params BLOB,
            residual BLOB, digest TEXT NOT NULL DEFAULT '', created_unix REAL NOT NULL);
        INSERT INTO tasks(config_json, state, created_unix) VALUES ('{}', 'active', 0);
        """
    )
    con.close()

    # Execute
    store = Store(db)

    # Assert: migrated in place; the old task has no state yet (it resumes from the initial one).
    assert store.task_aggregator_state(1) is None
    assert store._query("SELECT value FROM meta WHERE key='schema_version'") == [("5",)]
    store.close()


def test_a_secure_task_resumes_its_coordinate_scores(tmp_path: Path) -> None:
    # Prepare: one committed secure round moves the coordinate scores off the spec prior.
    from ._secure_service import secure_dp_task, secure_round_of

    db = tmp_path / "plume.db"
    with _service(db) as url:
        task_id = create_task(url, secure_dp_task(rounds=3))
        clients = [device_client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
        for c in clients:
            c.register()
        assert all(r.completed for r in secure_round_of(clients, task_id))
        status = wait_until(url, f"/v1/admin/tasks/{task_id}", "version", 1, timeout=60)
        assert status["version"] == 1, status
        store = Store(db)
        saved = decode_state(store.task_aggregator_state(task_id) or b"")
        store.close()

    # Execute: rebuild the task as a restarted coordinator does.
    restored = Coordinator(Store(db), ServiceConfig(db_path=str(db)))._build(task_id).secure

    # Assert: the scores after round 1, not the spec prior a fresh coordinator starts from.
    assert restored is not None
    assert saved["prior"] is False
    got = restored.coordinator.carried_state()
    assert got["score"].tobytes() == saved["score"].tobytes()
    assert got["prior"] is False


def test_a_stored_task_this_version_refuses_is_refused_naming_the_reason(tmp_path: Path) -> None:
    # Prepare: a central-DP task accounting a cohort of 2, stored; then its config edited to
    # select 3 (over-selection 1.5), as an older coordinator accepted (and under-counted)
    import json

    db = tmp_path / "plume.db"
    with _service(db) as url:
        task_id = create_task(url, task_config(rounds=2, aggregator=DP_FIXED))
    con = sqlite3.connect(db)
    (raw,) = con.execute("SELECT config_json FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    config = json.loads(raw) | {"over_selection": 1.5}
    con.execute("UPDATE tasks SET config_json=? WHERE task_id=?", (json.dumps(config), task_id))
    con.commit()
    con.close()
    # Execute: the start goes on (other tasks would run); this one is not loaded
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    # Assert: refused with the reason, never run with the wrong accounting
    assert task_id not in coord.runtimes
    status = coord.task_status(task_id)
    assert status.state == "refused" and status.refused is not None
    assert "sample=2" in status.refused
