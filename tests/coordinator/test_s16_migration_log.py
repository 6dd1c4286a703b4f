"""Opening an older database says, once, that it was migrated (older coordinators refuse it)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from coordinator.service.store import SCHEMA_VERSION, Store


def test_a_migration_is_logged_once_with_the_path_and_both_schemas(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a new database turned into schema 3's (4 only added versions.params)
    db = tmp_path / "plume.db"
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE versions DROP COLUMN params")
    con.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    con.commit()
    con.close()
    caplog.set_level(logging.INFO, logger="plume.coordinator")

    # Execute: open it, then open the migrated file again
    Store(db).close()
    first = [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()]
    caplog.clear()
    Store(db).close()

    # Assert
    assert first == [
        f"migrated the database {db} from schema 3 to {SCHEMA_VERSION} (older coordinators "
        "now refuse it; restore a backup taken before to go back)"
    ]
    assert not [r for r in caplog.records if "migrated" in r.getMessage()]
