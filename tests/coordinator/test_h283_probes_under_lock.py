"""/healthz and /readyz answer promptly while the database is locked (helper-275's F1).

Before: `/healthz` read the journal mode through the store's connection, under the store's
lock, and `/readyz`, once a write had failed, ran the store's probe write in a worker thread,
which held that lock for the whole 5 s busy timeout while another process held the database's
write lock; `/healthz` waited for it (helper-275's `d2_freeze.py 12`: one /healthz + /readyz
pair took 9.8 s, past a 1 s liveness timeout). And `/readyz` said 200 while another process
held the write lock, until a request's write had waited 5 s and failed.

Now `/healthz` does not touch the store, and `/readyz` first takes the database's write lock
through a connection of its own (waiting at most 0.5 s, nothing written, never holding the
store's lock), then runs the probe write only if that worked, and answers within about a
second whatever the check is waiting on. A real coordinator on loopback; "promptly" is a
third or less of the old wait.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, Store
from protocol.messages import to_json

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
BUSY_TIMEOUT_S = 5.0  # store.py's PRAGMA busy_timeout


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[ServerThread]:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    thread = ServerThread(cfg, shutdown_grace_s=0.0)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def _timed_get(url: str, path: str, out: dict[str, tuple[httpx.Response, float]]) -> None:
    t0 = time.monotonic()
    response = httpx.get(url + path, timeout=60)
    out[path] = (response, time.monotonic() - t0)


def _ready_again(http: httpx.Client, within: float = 15.0) -> httpx.Response:
    give_up = time.monotonic() + within
    while True:
        r = http.get("/readyz")
        if r.status_code == 200 or time.monotonic() > give_up:
            return r
        time.sleep(0.2)


def _query_only(store: Store, on: bool) -> None:
    with store._lock:
        store._db.execute(f"PRAGMA query_only={'ON' if on else 'OFF'}")


def test_readyz_is_503_while_another_connection_holds_the_write_lock(
    server: ServerThread, tmp_path: Path
) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        # Prepare: ready; then another connection takes the write lock (a sqlite3 shell's
        # BEGIN IMMEDIATE), once the first answer's second is over
        assert http.get("/readyz").status_code == 200
        time.sleep(1.1)
        other = sqlite3.connect(tmp_path / "plume.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            # Execute
            t0 = time.monotonic()
            locked = http.get("/readyz")
            took = time.monotonic() - t0
            health = http.get("/healthz")
        finally:
            other.execute("ROLLBACK")
            other.close()
        again = _ready_again(http)
    # Assert: not ready, saying why, within about the 0.5 s the check waits (before: 200, and
    # 503 only after a request's write had waited 5 s and failed); alive all along
    assert locked.status_code == 503, locked.text
    assert locked.headers["retry-after"] == "5"
    body = locked.json()
    assert body["ready"] is False and body["store_writable"] is False
    assert "database is locked" in body["store_error"], body
    assert "write lock" in body["store_error"]
    assert took < 4.0, took
    assert health.status_code == 200 and health.json()["journal_mode"] == "wal"
    # ... and ready again once the lock is given back
    assert again.status_code == 200, again.text
    assert server.app.state.store.write_errors == 0  # no write of the coordinator failed


def test_healthz_and_readyz_answer_while_the_stores_connection_is_held(
    server: ServerThread,
) -> None:
    # Prepare: a write failed (the store is not ready: the probe write will run), then the
    # store's own lock is held, as a write of this coordinator waiting on another process's
    # lock holds it: until both probes have answered, or HOLD s if one waits for the lock
    hold = 25.0
    store = server.app.state.store
    with httpx.Client(base_url=server.url, timeout=60) as http:
        _query_only(store, True)
        refused = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH)
        _query_only(store, False)
        assert refused.status_code == 503, refused.text
        taken, answered = threading.Event(), threading.Event()

        def hold_the_store() -> None:
            with store._lock:
                taken.set()
                answered.wait(hold)

        holder = threading.Thread(target=hold_the_store)
        holder.start()
        taken.wait(10)
        # Execute: readiness, then liveness while the readiness check still waits
        answers: dict[str, tuple[httpx.Response, float]] = {}
        ready = threading.Thread(target=_timed_get, args=(server.url, "/readyz", answers))
        ready.start()
        time.sleep(0.2)
        _timed_get(server.url, "/healthz", answers)
        ready.join(60)
        answered.set()  # both answered with the lock still held: give it back
        holder.join(60)
        again = _ready_again(http)
    (health, health_s), (readyz, ready_s) = answers["/healthz"], answers["/readyz"]
    # Assert: liveness at once (before: it waited for the store's lock, up to HOLD s)
    assert health.status_code == 200 and health.json()["ok"] is True
    assert health_s < 8.0, health_s
    # ... readiness within about its 1 s bound, not ready, saying why (before: HOLD s, then 200)
    assert readyz.status_code == 503, readyz.text
    assert "did not finish within 1 s" in readyz.json()["store_error"]
    assert ready_s < hold / 2.5, ready_s
    # ... and ready once the store's lock is given back (the probe write then commits)
    assert again.status_code == 200, again.text


def test_a_write_stalled_on_another_process_lock_leaves_the_probes_prompt_after_it(
    server: ServerThread, tmp_path: Path
) -> None:
    # Prepare: another connection holds the write lock; a write of the coordinator waits its
    # 5 s busy timeout and fails (503): the store now runs its probe write at /readyz
    other = sqlite3.connect(tmp_path / "plume.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            refused = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH)
            assert refused.status_code == 503, refused.text
            assert "database is locked" in refused.json()["detail"]
            # Execute: /readyz, and /healthz while it runs (helper-275's d2_freeze pair)
            answers: dict[str, tuple[httpx.Response, float]] = {}
            ready = threading.Thread(target=_timed_get, args=(server.url, "/readyz", answers))
            ready.start()
            time.sleep(0.2)
            _timed_get(server.url, "/healthz", answers)
            ready.join(60)
    finally:
        other.execute("ROLLBACK")
        other.close()
    (health, health_s), (readyz, ready_s) = answers["/healthz"], answers["/readyz"]
    # Assert: both within a third of the busy timeout they waited on before (the probe write
    # held the store's lock for it, and /healthz waited for that lock)
    assert readyz.status_code == 503 and "database is locked" in readyz.json()["store_error"]
    assert ready_s < BUSY_TIMEOUT_S / 3, ready_s
    assert health.status_code == 200
    assert health_s < BUSY_TIMEOUT_S / 3, health_s
