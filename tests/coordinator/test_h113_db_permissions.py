"""`plume coordinator serve` run as a user who may not read or write the database's files (a
service user given a database root made, the commonest deployment slip) names the file, its
owner and mode, and what to do. Before, a database file it could not open was SQLite's "unable
to open database file", and a lock file left by another user was "cannot create its lock
file ... (Permission denied); make its folder writable" when the folder was writable.

Real file permissions, so the coordinator runs as another user: as `nobody` through `setpriv`
when the tests run as root (root reads and writes any file), else as the test's own user with
the files made unreadable to it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.service import Store
from tests.test_h74_operator import _plume

ROOT = os.geteuid() == 0
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def nobody_runs_plume() -> bool:
    """Whether `nobody` can run this checkout's `plume` (setpriv there, and the venv and the
    source tree readable by every user; a checkout under a private home is not)."""
    if shutil.which("setpriv") is None:
        return False
    done = subprocess.run(
        [*AS_NOBODY, *_plume(), "--version"], capture_output=True, timeout=60, check=False
    )
    return done.returncode == 0


if ROOT and not nobody_runs_plume():
    pytest.skip(
        "needs `nobody` to run plume (setpriv, a readable checkout)", allow_module_level=True
    )


@pytest.fixture()
def folder() -> Iterator[Path]:
    """A folder the coordinator's user may write (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="plume-h113-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def _made_by_someone_else(path: Path, mode: int) -> None:
    """`path` with `mode`, owned by a user the coordinator is not (as root: root, the
    coordinator running as nobody); without root, a mode the test's own user cannot use."""
    path.chmod(mode if ROOT else 0)


def _serve(db: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [*_plume(), "coordinator", "serve", "--db", str(db), "--port", "0", *flags]
    if ROOT:
        cmd = [*AS_NOBODY, *cmd]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PLUME_DEBUG": "", "PLUME_ADMIN_TOKEN": "t", "HOME": "/tmp"},
    )  # fmt: skip


def _error_line(done: subprocess.CompletedProcess[str], status: int = 1) -> str:
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert done.returncode == status and len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return errors[0]


def test_a_database_file_it_may_not_read_is_named_with_owner_and_mode(folder: Path) -> None:
    # Prepare: a database made by another user, readable only by them
    db = folder / "plume.db"
    Store(db).close()
    _made_by_someone_else(db, 0o600)
    before = db.read_bytes()
    # Execute
    line = _error_line(_serve(db))
    # Assert
    assert line.startswith(f"plume coordinator serve: error: cannot use the database {db}: "), line
    assert f"this user (uid {NOBODY if ROOT else os.geteuid()}) cannot read and write {db}" in line
    assert f"owned by uid {os.geteuid()}" in line and "mode 0" in line
    assert "unable to open database file" not in line
    assert db.read_bytes() == before


def test_a_lock_file_of_another_user_is_named_not_the_folder(folder: Path) -> None:
    # Prepare: a database the coordinator's user may use, but its lock file (left by a serve
    # run as another user) it may not
    db = folder / "plume.db"
    Store(db, exclusive=True).close()
    db.chmod(0o666)
    lock = Path(f"{db}.lock")
    assert lock.exists()
    _made_by_someone_else(lock, 0o644)
    # Execute
    line = _error_line(_serve(db))
    # Assert: the lock file is named, and the folder (writable) is not blamed
    assert f"cannot read and write {lock}" in line, line
    assert "make its folder writable" not in line


def test_a_tls_key_it_may_not_read_is_named(folder: Path) -> None:
    # Prepare: a certificate and a key only another user reads (as a certbot privkey.pem is)
    from tests.coordinator.test_service_tls import _self_signed

    cert, key = _self_signed(folder)
    Path(cert).chmod(0o644)
    _made_by_someone_else(Path(key), 0o600)
    # Execute
    done = _serve(folder / "plume.db", "--tls-cert", cert, "--tls-key", key)
    line = _error_line(done, status=2)  # as a --tls-key that is not there
    # Assert: before, "error: [Errno 13] Permission denied", naming no file
    assert f"--tls-key {key}: this user (uid {NOBODY if ROOT else os.geteuid()}) " in line, line
    assert "cannot read it" in line and f"owned by uid {os.geteuid()}" in line, line
    assert not (folder / "plume.db").exists()
