"""Stop 48, helper-411's review of the operator's command line, findings 4 and 11: files the
user may not write, named as they are.

- `restore` blamed the folder ("cannot create its lock file ...; make its folder writable")
  for a lock file it could not open because the file itself is another user's, mode 0600,
  where `serve` on the same files names the cause: "this user (uid N) cannot read and write
  ... (owned by uid 0, mode 0600)". restore now runs serve's check first, and backup names
  the lock file beside its --out the same way.
- `backup --out /sys/b.db` said "[Errno 13] Permission denied: '/sys/.b.db.zf0jow51.tmp'",
  naming its own temporary file: it now says --out's folder is not writable, naming --out,
  as get-model does.

Real file permissions for the first, so the commands run as another user: as `nobody` through
`setpriv` when the tests run as root (root reads and writes any file), else as the test's own
user with the files made unusable to it (tests/coordinator/test_h113_db_permissions.py)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.service import Store
from tests.test_h74_operator import _plume

from ._restore import marked, names, one_error, run
from .test_h113_db_permissions import AS_NOBODY, NOBODY, ROOT


@pytest.fixture()
def folder() -> Iterator[Path]:
    """A folder the other user may write (pytest's tmp_path is private to root). Importing
    test_h113_db_permissions skips this module where `nobody` cannot run plume."""
    path = Path(tempfile.mkdtemp(prefix="plume-s48-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def _as_other_user(*argv: str) -> subprocess.CompletedProcess[str]:
    cmd = [*_plume(), "coordinator", *argv]
    if ROOT:
        cmd = [*AS_NOBODY, *cmd]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PLUME_DEBUG": "", "HOME": "/tmp"},
    )  # fmt: skip


def _error_line(done: subprocess.CompletedProcess[str], command: str) -> str:
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert errors[0].startswith(f"plume coordinator {command}: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return errors[0]


def _lock_of_another_user(db: Path) -> Path:
    """The lock file a serve run as another user left beside `db`: 0600, theirs alone (without
    root: a mode this user cannot use)."""
    lock = Path(f"{db}.lock")
    lock.chmod(0o600 if ROOT else 0)
    return lock


def test_restore_names_a_lock_file_of_another_user_not_the_folder(folder: Path) -> None:
    # Prepare: a database and a backup the restoring user may use, and the lock file that
    # another user's serve left beside the database
    db, bak = folder / "plume.db", folder / "good.bak"
    Store(db, exclusive=True).close()
    marked(bak, "backup")
    for f in (db, bak):
        f.chmod(0o666)
    lock = _lock_of_another_user(db)
    before = db.read_bytes()
    # Execute
    line = _error_line(_as_other_user("restore", "--db", str(db), "--from", str(bak)), "restore")
    # Assert: serve's words, with restore's fix; the folder (writable) not blamed
    user = NOBODY if ROOT else os.geteuid()
    assert line == (
        f"plume coordinator restore: error: cannot use the database {db}: this user (uid {user}) "
        f"cannot read and write {lock} (owned by uid {os.geteuid()}, mode "
        f"{lock.stat().st_mode & 0o7777:04o}); run restore as the user that owns the "
        "database's files, or give them to this one (chown)"
    )
    assert "make its folder writable" not in line
    assert db.read_bytes() == before


def test_backup_names_a_lock_file_of_another_user_beside_its_out(folder: Path) -> None:
    # Prepare: yesterday's backup at --out, beside it the lock file another user left
    db, out = folder / "plume.db", folder / "plume.bak"
    marked(db, "today")
    Store(out, exclusive=True).close()
    for f in (db, out):
        f.chmod(0o666)
    lock = _lock_of_another_user(out)
    # Execute
    line = _error_line(_as_other_user("backup", "--db", str(db), "--out", str(out)), "backup")
    # Assert
    user = NOBODY if ROOT else os.geteuid()
    assert f"cannot write --out {out}: this user (uid {user}) cannot read and write {lock} " in line
    assert "the lock file of the database --out names; run backup as its owner" in line
    assert "make its folder writable" not in line


def test_backup_into_a_folder_it_may_not_write_names_out(folder: Path) -> None:
    # Prepare: a database it may read, and a folder of another user for --out
    db = folder / "plume.db"
    marked(db, "today")
    db.chmod(0o644)
    theirs = folder / "theirs"
    theirs.mkdir(mode=0o755 if ROOT else 0o555)
    out = theirs / "b.db"
    try:
        # Execute
        line = _error_line(_as_other_user("backup", "--db", str(db), "--out", str(out)), "backup")
    finally:
        theirs.chmod(0o755)
    # Assert: --out named, and its folder; no temporary file's name
    assert line == (
        f"plume coordinator backup: error: cannot write --out {out}: this user may not create "
        f"files in {theirs}; pick another --out"
    )
    assert list(theirs.iterdir()) == []


def test_backup_whose_temporary_file_is_refused_names_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a folder the access check lets through but the file system refuses (root on
    # /sys: "[Errno 13] Permission denied: '/sys/.b.db.zf0jow51.tmp'"), as mkstemp there does
    db, out = tmp_path / "plume.db", tmp_path / "b.db"
    marked(db, "today")

    def refused(*_: object, dir: str, prefix: str, suffix: str) -> tuple[int, str]:
        name = os.path.join(dir, f"{prefix}zf0jow51{suffix}")
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    # Execute
    code = run("backup", "--db", str(db), "--out", str(out))
    # Assert
    err = one_error(capsys, "backup")
    assert code == 1
    assert err == (
        f"plume coordinator backup: error: cannot write --out {out}: this user may not create "
        f"files in {tmp_path} (Permission denied); pick another --out"
    )
    assert ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plume.db"]
    assert names(db) == ["today"]
