"""Frames `--keep-frames` pruned leave the database's files while the coordinator runs
(s45/privacy finding 2). `UPDATE updates SET frame=x''` emptied the rows, but the frames' bytes
stayed readable in the -wal file (the page images they were written in) and, on a SQLite built
without SECURE_DELETE, in the freed pages of the .db file. The store now sets
`PRAGMA secure_delete=ON` and truncates the -wal after a prune."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.service.store import Store

# Inline in a page, one overflow page, a chain of them.
SIZES = (200, 3000, 20_000)


def _rounds(store: Store, task_id: int, rounds: int, rng: random.Random) -> list[bytes]:
    """`rounds` committed rounds of 3 devices' random frames; the frames."""
    frames: list[bytes] = []
    for seq in range(1, rounds + 1):
        ups = {f"d{i}": (f"k{seq}.{i}", rng.randbytes(size)) for i, size in enumerate(SIZES)}
        round_id = store.open_round(task_id, seq, 0, sorted(ups), 3, 1, 1.0, 2.0)
        with store.transaction() as tx:
            for device, (key, frame) in ups.items():
                store.insert_update(tx, round_id, device, key, frame, 1.5)
        store.set_round_state(round_id, "committed")
        frames += [frame for _, frame in ups.values()]
    return frames


def _found(db: Path, frames: list[bytes]) -> dict[str, int]:
    """How many of `frames` show (their first or last 32 bytes) in the .db and its -wal."""
    found = {}
    for name in (db.name, f"{db.name}-wal"):
        path = db.parent / name
        data = path.read_bytes() if path.exists() else b""
        found[name] = sum(1 for f in frames if f[:32] in data or f[-32:] in data)
    return found


@pytest.fixture()
def secure_delete_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections as a SQLite built without SECURE_DELETE opens them (a build option,
    on in Debian's): the store must turn it on itself."""
    connect = sqlite3.connect

    def off(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.execute("PRAGMA secure_delete=OFF")
        return conn

    monkeypatch.setattr(sqlite3, "connect", off)  # the module the store calls it in


@pytest.mark.usefixtures("secure_delete_off_by_default")
def test_pruned_frames_are_in_neither_the_db_nor_the_wal_while_the_store_is_open(
    tmp_path: Path,
) -> None:
    # Prepare: 4 committed rounds of frames, all in the files (the store open, as served)
    db = tmp_path / "plume.db"
    store = Store(db, exclusive=True)
    try:
        task_id = store.create_task({"name": "t"}, "active", 0.0)
        frames = _rounds(store, task_id, 4, random.Random(45))
        assert sum(_found(db, frames).values()) >= len(frames)
        # Execute: keep the newest round's frames, prune the 3 older rounds'
        done = store.prune_frames(task_id, 1)
        # Assert: no pruned frame's bytes in either file; the kept round's still there
        pruned, kept = frames[:9], frames[9:]
        assert done.frames == len(pruned)
        assert _found(db, pruned) == {"plume.db": 0, "plume.db-wal": 0}
        assert sum(_found(db, kept).values()) == len(kept)
        assert store._db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    finally:
        store.close()


def test_a_checkpoint_held_off_by_a_reader_waits_briefly_and_is_owed_to_the_next_prune(
    tmp_path: Path,
) -> None:
    # Prepare: frames in two rounds; another connection holds a read snapshot (a backup)
    db = tmp_path / "plume.db"
    store = Store(db, exclusive=True)
    try:
        task_id = store.create_task({"name": "t"}, "active", 0.0)
        frames = _rounds(store, task_id, 2, random.Random(7))
        reader = sqlite3.connect(db)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM updates").fetchone()
        # Execute: a prune while the reader holds its snapshot, within a bounded wait
        started = time.monotonic()
        done = store.prune_frames(task_id, 1)
        assert time.monotonic() - started < 2.0  # not the 5 s busy timeout
        # Assert: the -wal could not be truncated; the next prune (nothing to prune) does it
        assert done.frames == 3 and store._wal_owed
        reader.rollback()
        reader.close()
        assert store.prune_frames(task_id, 1).frames == 0
        assert not store._wal_owed
        assert _found(db, frames[:3]) == {"plume.db": 0, "plume.db-wal": 0}
        assert store._db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    finally:
        store.close()
