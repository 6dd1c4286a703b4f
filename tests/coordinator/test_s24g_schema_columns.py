"""A Plume store that lacks a table or a column of its schema is refused at start, naming what
is missing, before anything is created in it (s24/r1, finding 3).

A schema-4 database without `updates.pruned_sha256` used to start cleanly and then answer
every upload 503 "retry later" for ever; one without the `ledger` table got an empty ledger
back from `CREATE TABLE IF NOT EXISTS` (its rows silently gone). Older schemas still migrate:
the columns their migration adds may be missing."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.service import Store
from coordinator.service.store import StoreError

from .test_service_support import ADMIN


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store(db: Path, *statements: str) -> None:
    """A schema-4 store with a task, then `statements` run on it; all of it in the .db."""
    store = Store(db)
    store.create_task({"name": "a"}, "active", 1.0)
    store.close()
    con = sqlite3.connect(db, isolation_level=None)
    for statement in statements:
        con.execute(statement)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


CASES = {
    "updates_pruned_sha256": (
        ["ALTER TABLE updates DROP COLUMN pruned_sha256"],
        "column updates.pruned_sha256",
    ),
    "ledger_table": (["DROP TABLE ledger"], "table ledger"),
    "rounds_measurements": (
        ["ALTER TABLE rounds DROP COLUMN measurements_json"],
        "column rounds.measurements_json",
    ),
    "tasks_agg_state": (["ALTER TABLE tasks DROP COLUMN agg_state"], "column tasks.agg_state"),
    "two_missing": (
        ["DROP TABLE nonces", "ALTER TABLE versions DROP COLUMN params"],
        "table nonces, column versions.params",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_schema_4_store_missing_a_table_or_column_is_refused_unchanged(
    tmp_path: Path, case: str
) -> None:
    # Prepare
    statements, words = CASES[case]
    db = tmp_path / "plume.db"
    _store(db, *statements)
    before = _digest(db)
    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db, exclusive=True)
    # Assert: one sentence naming what is missing; nothing created (the dropped table stays
    # dropped: no empty one in its place)
    text = str(refused.value)
    assert words in text and "schema 5" in text and "restore a backup" in text, text
    assert "\n" not in text
    assert _digest(db) == before
    # (nor the lock file the start made: tests/coordinator/test_s44_refused_start_lock.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plume.db"]


def test_serve_on_a_store_missing_a_column_prints_one_line(tmp_path: Path) -> None:
    # Prepare (a subprocess with a timeout: the code before served the store)
    db = tmp_path / "plume.db"
    _store(db, "ALTER TABLE updates DROP COLUMN pruned_sha256")
    cmd = [sys.executable, "-m", "coordinator.cli", "coordinator", "serve", "--db", str(db)]
    # Execute
    try:
        done = subprocess.run(
            [*cmd, "--port", "0", "--admin-token", ADMIN],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("serve started on a store without updates.pruned_sha256")
    # Assert
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(err) == 1 and err[0].startswith("plume coordinator serve: error: "), err
    assert "column updates.pruned_sha256" in err[0]


def test_a_schema_3_store_without_the_column_its_migration_adds_still_migrates(
    tmp_path: Path,
) -> None:
    # Prepare: schema 3 had no versions.params (the migration adds it)
    db = tmp_path / "plume.db"
    _store(
        db,
        "ALTER TABLE versions DROP COLUMN params",
        "UPDATE meta SET value='3' WHERE key='schema_version'",
    )
    # Execute
    store = Store(db)
    # Assert
    try:
        assert [t.config for t in store.tasks()] == [{"name": "a"}]
        columns = {r[1] for r in store._query("PRAGMA table_info(versions)")}
        assert "params" in columns
    finally:
        store.close()


def test_a_schema_3_store_missing_another_column_is_refused(tmp_path: Path) -> None:
    # Prepare: no migration adds rounds.measurements_json
    db = tmp_path / "plume.db"
    _store(
        db,
        "ALTER TABLE rounds DROP COLUMN measurements_json",
        "UPDATE meta SET value='3' WHERE key='schema_version'",
    )
    before = _digest(db)
    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db)
    # Assert
    assert "column rounds.measurements_json" in str(refused.value)
    assert _digest(db) == before
