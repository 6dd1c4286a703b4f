"""Stop 47: a partial copy a killed `plume coordinator backup` left is removed by the next
backup to the same file (crash review, helper-397).

`backup` writes through a temporary file beside `--out` (`.NAME.<8 random characters>.tmp`) and removes it
when it fails, but a backup killed mid-copy (`kill -9`, the OOM killer) left it, a partial
copy of every device's updates, which nothing ever removed: 44 MB of a 96 MB database in the
review. Each writer now holds an flock on its temporary file, and the next backup removes those
no process holds (a running backup's is kept), with a note on stderr. `model export` writes its
`--out` the same way."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pytest

from coordinator.service import AdminClient, ServerThread, ServiceConfig

from ._restore import run
from .test_h113_backup import ADMIN, TASK


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "plume.db"
    with (
        ServerThread(ServiceConfig(db_path=str(path), admin_token=ADMIN)) as url,
        AdminClient(url, ADMIN) as admin,
    ):
        admin.create_task(TASK, np.zeros(10, np.float32))
    return path


def test_a_killed_backups_partial_copy_is_removed_and_a_running_ones_kept(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: what a killed backup left (a copy and its rollback journal), and the temporary
    # file of a backup still running (its flock held here)
    out = tmp_path / "backups" / "plume-1.db"
    out.parent.mkdir()
    killed = out.parent / f".{out.name}.k1ll3d00.tmp"
    killed.write_bytes(b"part of a copy" * 1000)
    Path(f"{killed}-journal").write_bytes(b"j" * 512)
    running = out.parent / f".{out.name}.runn1ng0.tmp"
    running.write_bytes(b"being written")
    other = out.parent / ".other.db.k1ll3d00.tmp"  # another file's: not this backup's to judge
    other.write_bytes(b"x")
    held = os.open(running, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        # Execute
        code = run("backup", "--db", str(db), "--out", str(out))
    finally:
        os.close(held)
    captured = capsys.readouterr()

    # Assert: the backup written; the killed one's files gone and named; the others kept
    assert code == 0, captured.err
    assert json.loads(captured.out)["tasks"] == 1
    assert not killed.exists() and not Path(f"{killed}-journal").exists()
    assert f"removed {killed.name}, a partial copy an interrupted run left" in captured.err
    assert running.read_bytes() == b"being written" and other.exists()
    assert running.name not in captured.err
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [out.name, running.name, other.name]
    )


def test_a_backup_leaves_no_temporary_file_and_says_nothing_of_one(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    out = tmp_path / "plume-1.db"
    code = run("backup", "--db", str(db), "--out", str(out))

    # Assert
    captured = capsys.readouterr()
    assert code == 0 and captured.err == "", captured.err
    assert not list(tmp_path.glob(".plume-1.db.*"))
