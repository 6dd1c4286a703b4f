"""A ServerThread stopped before it started (a Ctrl-C in between) closes its store quietly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coordinator.service import ServerThread, ServiceConfig


def test_stop_before_start_closes_the_store_without_raising(tmp_path: Path) -> None:
    # Prepare
    db = tmp_path / "plume.db"
    server = ServerThread(ServiceConfig(db_path=str(db), admin_token="t"))
    connection = server.app.state.store._db
    connection.execute("SELECT 1")  # open before the stop

    # Execute
    server.stop()

    # Assert: the server's own store connection was closed (a second stop is a no-op)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")
    server.stop()
