"""Making the app directory: each directory the store makes has its entry synced into its
parent (a power loss after the device's key was synced into a new directory must not take the
directory itself), and a file where the directory should be is named with the fix: before,
the message was the OS's bare "File exists" or "Not a directory" on the whole path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdk.device_store import DeviceStore, DeviceStoreError


def _synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path fsynced from now on (files and directories), in order."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_the_directories_made_are_synced_into_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    synced = _synced(monkeypatch)
    app = tmp_path / "data" / "plume"

    # Execute
    DeviceStore(app).close()

    # Assert: data's entry in tmp_path, then plume's in data, before anything else is synced
    assert synced[:2] == [str(tmp_path), str(tmp_path / "data")]


def test_an_existing_directory_syncs_no_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    app = tmp_path / "plume"
    app.mkdir(mode=0o700)
    synced = _synced(monkeypatch)

    # Execute
    DeviceStore(app).close()

    # Assert
    assert str(tmp_path) not in synced


@pytest.mark.parametrize("under", [False, True], ids=["the-path", "on-the-way"])
def test_a_file_where_the_directory_goes_is_named(tmp_path: Path, under: bool) -> None:
    # Prepare
    blocker = tmp_path / "config.json"
    blocker.write_text("{}")
    app = blocker / "plume" / "app" if under else blocker

    # Execute
    with pytest.raises(DeviceStoreError) as caught:
        DeviceStore(app)

    # Assert
    named = "it is" if not under else f"{blocker} is"
    assert str(caught.value) == (
        f"{app} cannot be the app directory: {named} a file, not a directory; give the path "
        "of a directory (made if missing)"
    )
    assert blocker.read_text() == "{}"
