"""A Store given a path under `~` opens the file there, beside the lock `lock_path` names."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service.store import Store, lock_path


def test_a_home_relative_path_is_the_file_the_lock_is_beside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: HOME in a temporary folder, and a working directory elsewhere
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)

    # Execute
    store = Store("~/plume.db", exclusive=True)
    store.close()

    # Assert: the database under HOME, its lock beside it; nothing made in a folder named ~
    assert (home / "plume.db").exists()
    assert lock_path("~/plume.db") == str(home / "plume.db") + ".lock"
    assert (home / "plume.db.lock").exists()
    assert not (cwd / "~").exists()
