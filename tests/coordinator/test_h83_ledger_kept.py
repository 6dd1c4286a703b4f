"""Ledger rows the store cannot commit (a full disk, a lock, an I/O error) after the answer
told the device its exchange counts: kept in memory, read back by `ledger_rows`, written with
the next ledger write or at a clean close (found by test_h83_store_fault_machine.py)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from coordinator.service import Store
from coordinator.service._ratelimit import EveryFew


class Refusing:
    """A connection whose next `failures` COMMITs (or executemany calls) raise `error`."""

    def __init__(self, db: sqlite3.Connection, error: sqlite3.Error, failures: int) -> None:
        self.db = db
        self.error = error
        self.failures = failures

    def _maybe_fail(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise self.error

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            self._maybe_fail()
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        if isinstance(self.error, sqlite3.ProgrammingError):
            self._maybe_fail()
        return self.db.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def _refusing(store: Store, error: sqlite3.Error, failures: int) -> Refusing:
    conn = Refusing(store._db, error, failures)
    store._db = conn  # type: ignore[assignment]
    return conn


def _stored(db: Path, round_id: int) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT round_id, device_id, direction, payload_bytes, wire_bytes, dense_bytes, "
        "requests FROM ledger WHERE round_id=? ORDER BY device_id, direction",
        (round_id,),
    ).fetchall()
    con.close()
    return rows


def test_a_refused_ledger_write_is_kept_read_back_and_written_with_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: one row stored; the next two COMMITs fail as a full disk
    db = tmp_path / "plume.db"
    store = Store(db)
    store.ledger_add([(1, "a", "up", 10, 100, 40)])
    _refusing(store, sqlite3.OperationalError("database or disk is full"), 2)
    caplog.set_level(logging.WARNING, logger="plume.coordinator")
    # Execute: two refused writes (no exception), then one that commits
    store.ledger_add([(1, "a", "up", 1, 2, 3), (1, "a", "down", 5, 6, 7)])
    store.ledger_add([(1, "b", "down", 0, 9, 0), (2, "a", "up", 1, 1, 1)])
    while_refused = store.ledger_rows(1), store.ledger_rows(2), _stored(db, 1)
    store.ledger_add([(1, "a", "up", 100, 100, 100)])
    after = store.ledger_rows(1), store.ledger_rows(2), _stored(db, 1)
    store.close()
    # Assert: read back while refused (stored + kept), then all of it stored, each request once
    want_1 = [
        (1, "a", "down", 5, 6, 7, 1),
        (1, "a", "up", 111, 202, 143, 3),
        (1, "b", "down", 0, 9, 0, 1),
    ]
    assert while_refused == (
        [
            (1, "a", "down", 5, 6, 7, 1),
            (1, "a", "up", 11, 102, 43, 2),
            (1, "b", "down", 0, 9, 0, 1),
        ],
        [(2, "a", "up", 1, 1, 1, 1)],
        [(1, "a", "up", 10, 100, 40, 1)],
    )
    assert after == (want_1, [(2, "a", "up", 1, 1, 1, 1)], want_1)
    # (the second refusal came within 5 s of the first: one line, see the rate-limit test)
    kept = [r.getMessage() for r in caplog.records if "refused a ledger write" in r.getMessage()]
    assert len(kept) == 1 and "database or disk is full" in kept[0]


def test_a_refused_ledger_write_logs_at_most_one_line_every_5_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: every write refused (a full disk), on a clock the test moves
    now = [100.0]
    store = Store(tmp_path / "plume.db")
    store._ledger_log = EveryFew(5.0, clock=lambda: now[0])
    _refusing(store, sqlite3.OperationalError("database or disk is full"), 10**6)
    caplog.set_level(logging.WARNING, logger="plume.coordinator")
    # Execute: 50 requests' writes within a second, then one 5 s after the first
    for i in range(50):
        now[0] = 100.0 + i * 0.02
        store.ledger_add([(1, f"d{i}", "up", 1, 2, 3)])
    now[0] = 105.0
    store.ledger_add([(1, "late", "up", 1, 2, 3)])
    # Assert: two lines, the second counting the 49 left out; every row still kept
    lines = [r.getMessage() for r in caplog.records if "refused a ledger write" in r.getMessage()]
    assert len(lines) == 2
    assert "50 ledger rows kept" not in lines[0] and "1 ledger rows kept" in lines[0]
    assert "51 ledger rows kept" in lines[1] and "(49 more like it since" in lines[1]
    assert len(store.ledger_rows(1)) == 51


def test_a_clean_close_writes_the_kept_rows_or_says_they_are_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: two stores with a refused ledger write each; the second keeps failing at close
    caplog.set_level(logging.ERROR, logger="plume.coordinator")
    flushed = Store(tmp_path / "a.db")
    _refusing(flushed, sqlite3.OperationalError("database is locked"), 1)
    flushed.ledger_add([(3, "a", "up", 1, 2, 3)])
    lost = Store(tmp_path / "b.db")
    _refusing(lost, sqlite3.OperationalError("disk I/O error"), 2)
    lost.ledger_add([(3, "a", "up", 1, 2, 3)])
    # Execute
    flushed.close()
    lost.close()
    # Assert
    assert _stored(tmp_path / "a.db", 3) == [(3, "a", "up", 1, 2, 3, 1)]
    assert _stored(tmp_path / "b.db", 3) == []
    errors = [r.getMessage() for r in caplog.records]
    assert errors == [
        "1 ledger rows the database refused are lost at this stop (their bytes are missing "
        "from their rounds' ledgers)"
    ]


def test_a_bug_in_the_ledger_write_still_raises(tmp_path: Path) -> None:
    # Prepare: a programming error, not the database failing
    store = Store(tmp_path / "plume.db")
    _refusing(store, sqlite3.ProgrammingError("Incorrect number of bindings supplied"), 1)
    # Execute / Assert: raised, nothing kept
    with pytest.raises(sqlite3.ProgrammingError):
        store.ledger_add([(1, "a", "up", 1, 2, 3)])
    assert store.ledger_rows(1) == []
    store.close()
