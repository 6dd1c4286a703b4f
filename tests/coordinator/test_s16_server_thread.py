"""A ServerThread stopped before it started (a Ctrl-C in between) closes its store quietly."""

from __future__ import annotations

from pathlib import Path

from coordinator.service import ServerThread, ServiceConfig, Store


def test_stop_before_start_closes_the_store_without_raising(tmp_path: Path) -> None:
    # Prepare
    db = tmp_path / "plume.db"
    server = ServerThread(ServiceConfig(db_path=str(db), admin_token="t"))

    # Execute
    server.stop()

    # Assert: the database is free for the next opener (its store released the lock)
    Store(db).close()
