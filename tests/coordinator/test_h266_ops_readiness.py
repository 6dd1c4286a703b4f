"""A coordinator whose database refuses every write (s25/ops finding 2).

Before: `/healthz` answered `ok: true` while every request that writes was 503
`store_unavailable` (a full disk: even idle check-ins, whose nonce is a write), there was no
readiness signal and no store error metric, and each refused request logged its own ERROR line.
Now `/readyz` is 503 while the last write failed and none has committed since (and tries a
write itself, so it recovers without traffic), `plume_store_errors_total` counts the refused
writes, and the store error line is logged at most once every 5 s with the count left out.

A real coordinator on loopback. The database refuses writes through `PRAGMA query_only` on the
store's connection (SQLite's "attempt to write a readonly database", an OperationalError like
a full disk's), turned off again for the recovery.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, Store
from protocol.messages import to_json
from tests._clock import Clock

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}


def _query_only(store: Store, on: bool) -> None:
    with store._lock:
        store._db.execute(f"PRAGMA query_only={'ON' if on else 'OFF'}")


def _store_errors(server: ServerThread) -> float | None:
    registry = server.app.state.metrics.registry
    return registry.get_sample_value("plume_store_errors_total")  # type: ignore[no-any-return]


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[ServerThread]:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    thread = ServerThread(cfg, shutdown_grace_s=0.0)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def test_readyz_is_503_while_the_store_refuses_writes_and_recovers_by_itself(
    server: ServerThread,
) -> None:
    store = server.app.state.store
    with httpx.Client(base_url=server.url) as http:
        # Prepare: ready at the start, no store error counted yet (the series exists at 0)
        first = http.get("/readyz")
        assert first.status_code == 200, first.text
        assert first.json()["ready"] is True and first.json()["store_writable"] is True
        assert _store_errors(server) == 0.0
        # Execute: the store refuses writes; three task creations are refused
        _query_only(store, True)
        refused = [
            http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH)
            for _ in range(3)
        ]
        ready = http.get("/readyz")
        health = http.get("/healthz")
        # Assert: 503s, not ready (saying why), still alive, the writes counted
        assert [r.status_code for r in refused] == [503, 503, 503]
        assert ready.status_code == 503, ready.text
        assert ready.headers["retry-after"] == "5"
        body = ready.json()
        assert body["ready"] is False and body["store_writable"] is False
        assert "readonly" in body["store_error"]
        assert health.status_code == 200 and health.json()["ok"] is True
        assert _store_errors(server) == 3.0
        # Execute: the store takes writes again, and no request writes (no traffic)
        _query_only(store, False)
        time.sleep(1.1)  # readyz tries a write at most once a second
        again = http.get("/readyz")
        # Assert: ready again from its own write, which left nothing behind
        assert again.status_code == 200, again.text
        assert again.json()["store_error"] is None
        assert store._query("SELECT key FROM meta WHERE key LIKE 'plume_write%'") == []
        assert _store_errors(server) == 3.0  # readyz's tries are not counted
        created = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH)
        assert created.status_code == 201, created.text


def test_a_write_that_changes_nothing_does_not_make_the_store_ready(tmp_path: Path) -> None:
    # Prepare: a store whose last write failed
    store = Store(tmp_path / "plume.db")
    store.register_device("a", b"k" * 32, 0.0)
    _query_only(store, True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.register_device("b", b"k" * 32, 0.0)
    _query_only(store, False)
    # Execute: a registration again of a device already there (INSERT OR IGNORE: no change)
    assert store.register_device("a", b"k" * 32, 0.0) is False
    # Assert: still failing (it wrote nothing); a write that changes a row clears it
    assert store.write_failing is not None and store.write_errors == 1
    assert store.register_device("b", b"k" * 32, 0.0) is True
    assert store.write_failing is None
    store.close()


def test_the_store_error_line_is_logged_at_most_once_every_5_s(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the log limiter's clock under the test's control, writes refused
    clock = Clock(1000.0)
    server.app.state.store_error_log.clock = clock
    _query_only(server.app.state.store, True)
    caplog.set_level(logging.ERROR, logger="plume.coordinator")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "store error on" in r.getMessage()]

    with httpx.Client(base_url=server.url) as http:

        def refuse() -> None:
            r = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH)
            assert r.status_code == 503, r.text

        # Execute: 4 refused requests within the same instant, then one 6 s later
        for _ in range(4):
            refuse()
        within = lines()
        clock.now += 6.0
        refuse()
    # Assert: one line for the first 4 (before: 4), then one saying 3 were left out
    assert len(within) == 1, within
    after = lines()
    assert len(after) == 2, after
    assert "(3 more like it since the last such line, not logged" in after[1]
    assert _store_errors(server) == 5.0
