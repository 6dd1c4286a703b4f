"""docs/operations.md's VACUUM command needs no `sqlite3` tool: its Python one-liner, run as
written (the path swapped for a test database), gives the freed pages back and leaves a
store serve opens."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from coordinator.service import Store

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
DOC_PATH = "/var/lib/plume/plume.db"


def _one_liner() -> list[str]:
    text = DOC.read_text()
    (line,) = re.findall(r"^python3 -c .*VACUUM.*$", text, flags=re.M)
    assert DOC_PATH in line
    return shlex.split(line)


def test_the_documented_vacuum_one_liner_shrinks_a_store_that_still_opens(
    tmp_path: Path,
) -> None:
    # Prepare: a store with 2 MB of rows deleted (free pages VACUUM gives back)
    db = tmp_path / "plume.db"
    store = Store(db)
    with store.transaction() as tx:
        tx.execute("CREATE TABLE h183_junk (x BLOB)")
        tx.executemany("INSERT INTO h183_junk VALUES (?)", [(b"x" * 10_000,)] * 200)
    with store.transaction() as tx:
        tx.execute("DELETE FROM h183_junk")
    store.close()  # the coordinator stopped
    before = db.stat().st_size
    argv = [a.replace(DOC_PATH, str(db)) for a in _one_liner()]
    assert argv[:2] == ["python3", "-c"]
    # Execute (this interpreter for `python3`: any Python with its sqlite3 module)
    subprocess.run([sys.executable, *argv[1:]], check=True, timeout=120)
    # Assert
    assert db.stat().st_size < before // 4, (before, db.stat().st_size)
    store = Store(db)
    assert store.journal_mode == "wal"
    store.close()
