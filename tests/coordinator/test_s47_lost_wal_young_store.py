"""Stop 47: a young store whose -wal was lost, truncated or damaged after a crash is refused,
not served as a new, empty store (crash review, helper-397).

A store's tables are created right after it turns WAL on, and committed to the -wal: they reach
the database file itself only at SQLite's first checkpoint (1,000 pages of writes, or a clean
stop). A coordinator killed before then leaves a one-page file in WAL mode with no table, and
everything (tables, tasks, devices, privacy spending) in the -wal. With that -wal deleted or cut
short, the start used to create the tables afresh and serve an empty store, its task and round
ids handed out again, with no word in the log. Now it refuses with one line, leaving the files
as they were. A -wal cut after some whole commits still rolls back to the last of them, as any
lost tail of a -wal does (docs/operations.md, restore)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coordinator.service import Store
from coordinator.service.store import StoreError

from .test_s24g_empty_db_with_wal import _files

WAL_HEADER = 32  # a -wal's header; each frame after it: a 24-byte header and a page


def _killed_young_store(tmp: Path, db: Path) -> None:
    """`db` and its -wal as a coordinator killed after creating two tasks, before SQLite's
    first checkpoint, leaves them."""
    src = tmp / "elsewhere" / "plume.db"
    src.parent.mkdir()
    store = Store(src)
    store.create_task({"name": "a"}, "active", 1.0)
    store.create_task({"name": "b"}, "active", 1.0)
    shutil.copyfile(src, db)  # while open: the tables are in the -wal only
    shutil.copyfile(f"{src}-wal", f"{db}-wal")
    store.close()


@pytest.mark.parametrize("cut", [None, 0, 20, WAL_HEADER, WAL_HEADER + 24 + 100])
def test_a_young_store_without_its_wal_is_refused_and_left_as_it_was(
    tmp_path: Path, cut: int | None
) -> None:
    # Prepare: the -wal removed (None) or cut to `cut` bytes
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "plume.db"
    _killed_young_store(tmp_path, db)
    wal = Path(f"{db}-wal")
    if cut is None:
        wal.unlink()
    else:
        wal.write_bytes(wal.read_bytes()[:cut])
    before = _files(folder)

    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db, exclusive=True)

    # Assert: one line naming the damage and the way out; both files byte for byte
    text = str(refused.value)
    assert "in WAL mode but holds no table" in text, text
    assert ("no -wal file" if cut is None else f"its -wal ({cut} bytes) holds none") in text, text
    assert "restore a backup" in text and "\n" not in text
    assert _files(folder) == before


def test_a_young_store_with_its_wal_opens_with_its_tasks(tmp_path: Path) -> None:
    # Prepare
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "plume.db"
    _killed_young_store(tmp_path, db)

    # Execute
    store = Store(db, exclusive=True)
    try:
        tasks = store.tasks()
    finally:
        store.close()

    # Assert: the two tasks of the -wal (the refusal is for a file without its tables only)
    assert len(tasks) == 2


def test_a_new_store_and_a_reopened_one_still_open(tmp_path: Path) -> None:
    # Execute: created, closed (a clean stop checkpoints), opened again
    db = tmp_path / "plume.db"
    Store(db).close()
    store = Store(db)
    try:
        assert store.tasks() == []
    finally:
        store.close()
