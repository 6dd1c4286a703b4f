"""The app directory's own files and the directory itself (helper-67): state.json,
pending.json and residuals are read without following a symlink (one could name a file
outside the app directory), and an existing app directory open to other users is narrowed to
owner-only (0700) when this user owns it, a `DeviceStoreError` otherwise."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from compression import ErrorFeedback
from sdk.device_store import DeviceStore, DeviceStoreError, PendingUpload

from .test_h67_store_layout import _frame, _pending, _sent
from .test_review_device_state import SPEC, _ef

# -- 2. no read through a symlink -----------------------------------------------------------------


def test_a_symlinked_state_is_refused_not_read(tmp_path: Path) -> None:
    # Prepare: state.json is a symlink to another app's state outside the app directory
    root, outside = tmp_path / "app", tmp_path / "other.json"
    outside.write_text(json.dumps({"device_id": "f" * 32, "registered": True}))
    DeviceStore(root)
    (root / "state.json").symlink_to(outside)

    # Execute / Assert: the store's error, naming the link; before, the other state was read
    store = DeviceStore(root)
    with pytest.raises(DeviceStoreError, match=r"state\.json \(device state\) is a symlink"):
        store.state()
    with pytest.raises(DeviceStoreError, match="is a symlink"):
        store.update_state(registered=False)
    assert json.loads(outside.read_text())["registered"] is True  # never written through


def test_a_symlinked_pending_upload_is_refused_not_read(tmp_path: Path) -> None:
    # Prepare: a pending upload, then its pending.json moved out and linked back
    root, outside = tmp_path / "app", tmp_path / "pending.json"
    store = DeviceStore(root)
    store.save_pending(_pending(SPEC), _ef(1.0))
    (root / "pending.json").rename(outside)
    (root / "pending.json").symlink_to(outside)

    # Execute / Assert
    with pytest.raises(DeviceStoreError, match=r"pending\.json \(pending upload\) is a symlink"):
        DeviceStore(root).load_pending()
    assert outside.is_file()


def test_a_symlinked_residual_is_not_read_and_a_save_replaces_the_link(tmp_path: Path) -> None:
    # Prepare: task 1's residual file is a symlink to a residual of task 1 outside the directory
    root, other = tmp_path / "app", tmp_path / "elsewhere"
    DeviceStore(other).save_residual(_ef(7.0), 1)
    outside = other / "residual-1.bin"
    before = outside.read_bytes()
    store = DeviceStore(root)
    (root / "residual-1.bin").symlink_to(outside)

    # Execute / Assert: no residual is read through it (before: 7.0 was), with or without a
    # layout; a save replaces the link, never writing through it
    assert store.load_residual(SPEC.size, 1) is None
    assert store.load_residual(SPEC.size, 1, SPEC) is None
    store.save_residual(_ef(2.0), 1, SPEC)
    assert not (root / "residual-1.bin").is_symlink()
    held = store.load_residual(SPEC.size, 1, SPEC)
    assert held is not None and float(held.residual[0]) == 2.0
    assert outside.read_bytes() == before


def test_a_refusal_into_a_symlinked_residual_keeps_its_content(tmp_path: Path) -> None:
    # Prepare: an upload of task 1 pending; task 1's residual file a symlink to one of
    # another size outside (read through it, it made the content be dropped as another model's)
    root, other = tmp_path / "app", tmp_path / "elsewhere"
    small = DeviceStore(other)
    ef = ErrorFeedback(12)
    ef.residual = np.full(12, 3.0, np.float32)
    small.save_residual(ef, 1)
    store = DeviceStore(root)
    store.save_pending(_pending(SPEC), _ef(1.0))
    (root / "residual-1.bin").unlink()
    (root / "residual-1.bin").symlink_to(other / "residual-1.bin")

    # Execute
    got = DeviceStore(root).refuse_pending(_sent(0.5), SPEC.size)

    # Assert: the content starts task 1's residual; the file outside is untouched
    assert got is not None and float(got.residual[0]) == 0.5
    assert not (root / "residual-1.bin").is_symlink()
    assert DeviceStore(other).load_residual(12, 1) is not None


def test_a_symlinked_model_file_is_no_model(tmp_path: Path) -> None:
    # Prepare: the model held, then model.f32 replaced by a link to the same bytes outside
    root, outside = tmp_path / "app", tmp_path / "model.f32"
    store = DeviceStore(root)
    params = np.arange(SPEC.size, dtype=np.float32)
    digest = hashlib.sha256(params.astype("<f4").tobytes()).hexdigest()
    store.save_model(1, params, 3, digest, True)
    (root / "model.f32").rename(outside)
    (root / "model.f32").symlink_to(outside)

    # Execute / Assert: no model held (the next download is a whole snapshot)
    assert store.load_model(1, SPEC.size) is None


def test_a_dangling_symlink_counts_as_no_file(tmp_path: Path) -> None:
    # A link to nothing holds nothing to lose: the state reads empty, and is written over
    root = tmp_path / "app"
    DeviceStore(root)
    (root / "state.json").symlink_to(tmp_path / "missing.json")
    store = DeviceStore(root)
    assert store.state() == {}
    store.update_state(registered=True)
    assert not (root / "state.json").is_symlink()
    assert not (tmp_path / "missing.json").exists()
    assert store.state() == {"registered": True}


def test_a_fifo_state_file_does_not_block(tmp_path: Path) -> None:
    root = tmp_path / "app"
    DeviceStore(root)
    os.mkfifo(root / "state.json")
    with pytest.raises(DeviceStoreError, match="is not a regular file"):
        DeviceStore(root).state()


# -- 3. an app directory open to other users ------------------------------------------------


@pytest.mark.parametrize("mode", [0o755, 0o777, 0o711, 0o2770])
def test_an_open_app_directory_this_user_owns_is_narrowed(tmp_path: Path, mode: int) -> None:
    # Prepare: an existing app directory (with a residual in it) open to others
    root = tmp_path / "app"
    DeviceStore(root).save_residual(_ef(1.0), 1)
    os.chmod(root, mode)

    # Execute
    store = DeviceStore(root)

    # Assert: the group and other bits are gone, the owner's (and setgid) kept; nothing lost
    assert stat.S_IMODE(os.stat(root).st_mode) == mode & ~0o077
    held = store.load_residual(SPEC.size, 1)
    assert held is not None and float(held.residual[0]) == 1.0


def test_an_owner_only_app_directory_is_left_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "app"
    root.mkdir()
    os.chmod(root, 0o700)
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(os, "chmod", lambda *a, **k: calls.append(a))
    DeviceStore(root)
    assert calls == []


def test_an_app_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    # Prepare: an app directory open to others, owned by another user
    root = tmp_path / "app"
    root.mkdir()
    os.chmod(root, 0o777)
    os.chown(root, 4242, 4242)

    # Execute / Assert: refused, and its mode left alone (not this user's to change)
    with pytest.raises(DeviceStoreError, match="owned by uid 4242, not by this process's uid"):
        DeviceStore(root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o777


def test_an_app_directory_that_cannot_be_narrowed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an open app directory whose mode cannot be changed (a read-only mount, say)
    root = tmp_path / "app"
    root.mkdir()
    os.chmod(root, 0o755)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)

    # Execute / Assert
    with pytest.raises(DeviceStoreError, match="could not be narrowed to 0700: Operation not"):
        DeviceStore(root)


def test_a_symlinked_app_directory_narrows_the_directory_it_names(tmp_path: Path) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    os.chmod(real, 0o755)
    link.symlink_to(real)
    DeviceStore(link).save_pending(PendingUpload(1, "k" * 8, _frame(1.0)), _ef(1.0))
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(link).st_mode) == 0o777  # the link itself: untouched


def test_a_file_that_is_not_regular_is_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a FIFO where task 1's residual and the state are kept (a device node is treated
    # alike: opening one can act, e.g. rewind a tape, so the type is checked before the open)
    root = tmp_path / "app"
    store = DeviceStore(root)
    os.mkfifo(root / "residual-1.bin")
    os.mkfifo(root / "state.json")
    opened: list[str] = []
    real = os.open

    def spy(path: object, *args: object, **kwargs: object) -> int:
        opened.append(Path(str(path)).name)
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)

    # Execute
    assert store.load_residual(SPEC.size, 1) is None
    with pytest.raises(DeviceStoreError, match="is not a regular file"):
        store.state()

    # Assert
    assert "residual-1.bin" not in opened and "state.json" not in opened
