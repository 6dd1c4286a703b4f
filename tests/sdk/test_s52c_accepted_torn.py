"""accepted-<r>.json, the commit point of an accepted upload's record, cannot be torn by a crash
mid-write: its bytes go to a temp file that is fsynced before it is renamed over the name, and
the directory is fsynced after the rename; the record's frame is in place (renamed and its
directory entry synced) before the metadata that names it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sdk.device_store import AcceptedUpload, DeviceStore, PendingUpload

from .test_review_device_state import SPEC, _Crash, _ef


def _pending(store: DeviceStore, round_id: int) -> PendingUpload:
    store.save_pending(PendingUpload(round_id, "k" * 32, b"frame-bytes", 144, SPEC), _ef(1.0))
    pending = store.load_pending()
    assert pending is not None
    return pending


def test_a_crash_mid_write_of_the_record_leaves_no_torn_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a record of round 5 held, and round 7's upload pending; the process dies after
    # half of accepted-7.json's bytes were written (what a power loss mid-write leaves)
    store = DeviceStore(tmp_path)
    store.save_accepted(AcceptedUpload(5, b"earlier-frame", SPEC, 144))
    pending = _pending(store, 7)
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("accepted-7.json.tmp"):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise _Crash("accepted-7.json")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)

    # Execute
    with pytest.raises(_Crash):
        store.accept_pending(pending, SPEC)
    monkeypatch.undo()
    store.close()
    assert not (tmp_path / "accepted-7.json").exists()  # the torn bytes never had the name
    again = DeviceStore(tmp_path)

    # Assert: round 7 is still pending (its re-send is harmless: same idempotency key), no
    # record of it, round 5's record as it was, and the torn temp file gone
    resumed = again.load_pending()
    assert resumed is not None and (resumed.round_id, resumed.key) == (7, "k" * 32)
    assert again.accepted_rounds() == [5]
    assert again.load_accepted(7) is None
    earlier = again.load_accepted(5)
    assert earlier is not None and earlier.frame == b"earlier-frame"
    assert not list(tmp_path.glob("*.tmp"))
    again.accept_pending(resumed, SPEC)
    record = again.load_accepted(7)
    assert record is not None and record.frame == b"frame-bytes"
    assert again.load_pending() is None


def test_the_record_is_synced_before_and_after_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: log every fsync (of a file, or of the directory) and rename
    store = DeviceStore(tmp_path)
    pending = _pending(store, 7)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        events.append(("rename", f"{Path(src).name}>{Path(dst).name}"))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    # Execute
    store.accept_pending(pending, SPEC)
    monkeypatch.undo()

    # Assert: frame first (bytes synced, renamed, directory synced), then the metadata alike
    directory = tmp_path.name
    frame = events.index(("rename", "accepted-7.frame.tmp>accepted-7.frame"))
    meta = events.index(("rename", "accepted-7.json.tmp>accepted-7.json"))
    assert events[frame - 1] == ("fsync", "accepted-7.frame.tmp")
    assert events[frame + 1] == ("fsync", directory)
    assert events[meta - 1] == ("fsync", "accepted-7.json.tmp")
    assert events[meta + 1] == ("fsync", directory)
    assert frame < meta
