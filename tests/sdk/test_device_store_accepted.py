"""The accepted-upload record in the app directory: kept after a receipt until a check-in says
what became of its round, then forgotten (committed) or added back into the residual (abandoned)
exactly once, whatever write a crash interrupts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sdk.device_store as device_store
from sdk.device_store import AcceptedUpload, DeviceStore, PendingUpload

from .test_review_device_state import SPEC, _Crash, _crash_on, _ef

SENT = np.random.default_rng(5).standard_normal(SPEC.size).astype(np.float32)


def _residual(root: Path) -> np.ndarray:
    ef = DeviceStore(root).load_residual(SPEC.size)
    assert ef is not None
    return ef.residual


def _accepted(root: Path, round_id: int = 7, residual: float = 1.0) -> DeviceStore:
    """A directory whose upload to `round_id` was accepted, with `residual` everywhere."""
    store = DeviceStore(root)
    store.save_pending(PendingUpload(round_id, "k" * 32, b"frame-bytes", 144, SPEC), _ef(residual))
    store.accept_pending(store.load_pending() or PendingUpload(0, "x", b""), SPEC)
    return store


def test_an_accepted_upload_becomes_the_record_and_stops_being_pending(tmp_path: Path) -> None:
    # Prepare / Execute
    store = _accepted(tmp_path)

    # Assert
    record = DeviceStore(tmp_path).load_accepted()
    assert store.load_pending() is None
    assert record is not None
    assert (record.round_id, record.frame, record.spec.fingerprint) == (
        7,
        b"frame-bytes",
        SPEC.fingerprint,
    )
    np.testing.assert_array_equal(_residual(tmp_path), _ef(1.0).residual)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["accepted-7.frame", "accepted-7.json", "residual.bin"]


def test_a_pending_upload_without_a_layout_is_only_forgotten(tmp_path: Path) -> None:
    # Prepare: a record written before layouts were kept with pending uploads
    store = DeviceStore(tmp_path)
    store.save_pending(PendingUpload(7, "k" * 32, b"frame"), _ef(1.0))

    # Execute
    store.accept_pending(PendingUpload(7, "k" * 32, b"frame"), None)

    # Assert: as before records were kept
    assert store.load_accepted() is None and store.load_pending() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residual.bin"]


def test_return_adds_the_content_once_and_forget_keeps_the_residual(tmp_path: Path) -> None:
    # Prepare
    a, b = _accepted(tmp_path / "a"), _accepted(tmp_path / "b")

    # Execute
    first = a.return_accepted(7, SENT, SPEC.size)
    second = a.return_accepted(7, SENT, SPEC.size)
    b.forget_accepted(7)

    # Assert
    assert first is not None and second is None
    want = (_ef(1.0).residual + SENT).astype(np.float32)
    np.testing.assert_array_equal(first.residual, want)
    np.testing.assert_array_equal(_residual(tmp_path / "a"), want)
    np.testing.assert_array_equal(_residual(tmp_path / "b"), _ef(1.0).residual)
    for root in (tmp_path / "a", tmp_path / "b"):
        assert DeviceStore(root).load_accepted() is None
        assert sorted(p.name for p in root.iterdir()) == ["residual.bin"]


def test_an_outcome_for_another_round_leaves_the_record(tmp_path: Path) -> None:
    # Prepare
    store = _accepted(tmp_path)

    # Execute
    returned = store.return_accepted(6, SENT, SPEC.size)
    store.forget_accepted(8)

    # Assert
    record = store.load_accepted()
    assert returned is None
    assert record is not None and record.round_id == 7
    np.testing.assert_array_equal(_residual(tmp_path), _ef(1.0).residual)


def test_a_return_interrupted_before_its_commit_is_redone_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the return dies after writing the new residual, before removing accepted.json
    _accepted(tmp_path)
    _crash_on(monkeypatch, "accepted-7.json", device_store, "_unlink")
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).return_accepted(7, SENT, SPEC.size)
    monkeypatch.undo()

    # Execute: restart; the record is still there, the next check-in answers again
    store = DeviceStore(tmp_path)
    record = store.load_accepted()
    before = _residual(tmp_path)
    after = store.return_accepted(7, SENT, SPEC.size)

    # Assert: untouched until the redo, then the content is added once
    assert record is not None and record.round_id == 7
    np.testing.assert_array_equal(before, _ef(1.0).residual)
    assert after is not None
    want = (_ef(1.0).residual + SENT).astype(np.float32)
    np.testing.assert_array_equal(after.residual, want)
    np.testing.assert_array_equal(_residual(tmp_path), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residual.bin"]


def test_a_return_interrupted_after_its_commit_keeps_the_content_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the return dies at the rename that follows its commit point
    _accepted(tmp_path)
    _crash_on(monkeypatch, "accepted-7.settled", os, "replace")
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).return_accepted(7, SENT, SPEC.size)
    monkeypatch.undo()

    # Execute: restart; the record is gone, so a repeated answer adds nothing; a later save of
    # a pending upload settles the files
    store = DeviceStore(tmp_path)
    record = store.load_accepted()
    loaded = _residual(tmp_path)
    again = store.return_accepted(7, SENT, SPEC.size)
    store.save_pending(PendingUpload(8, "n" * 32, b"next"), _ef(3.0))
    store.clear_pending()

    # Assert
    want = (_ef(1.0).residual + SENT).astype(np.float32)
    assert record is None and again is None
    np.testing.assert_array_equal(loaded, want)
    np.testing.assert_array_equal(_residual(tmp_path), _ef(3.0).residual)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residual.bin"]


def test_a_crash_between_acceptance_and_forgetting_the_pending_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: accept_pending dies after its commit point (accepted.json), before it removed
    # pending.json: both files name the same upload
    store = DeviceStore(tmp_path)
    pending = PendingUpload(7, "k" * 32, b"frame-bytes", 144, SPEC)
    store.save_pending(pending, _ef(1.0))
    _crash_on(monkeypatch, "pending.json", device_store, "_unlink")
    with pytest.raises(_Crash):
        store.accept_pending(pending, SPEC)
    monkeypatch.undo()

    # Execute: restart
    again = DeviceStore(tmp_path)
    resumed = again.load_pending()

    # Assert: not pending (a refused re-send would add the content while the record adds it
    # again), the record held once, the residual untouched
    assert resumed is None
    record = again.load_accepted()
    assert record is not None and record.round_id == 7
    np.testing.assert_array_equal(_residual(tmp_path), _ef(1.0).residual)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["accepted-7.frame", "accepted-7.json", "residual.bin"]


def test_a_crash_before_acceptance_commits_leaves_the_upload_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    store = DeviceStore(tmp_path)
    pending = PendingUpload(7, "k" * 32, b"frame-bytes", 144, SPEC)
    store.save_pending(pending, _ef(1.0))
    _crash_on(monkeypatch, "accepted-7.json")
    with pytest.raises(_Crash):
        store.accept_pending(pending, SPEC)
    monkeypatch.undo()

    # Execute
    again = DeviceStore(tmp_path)

    # Assert: still pending (its re-send gets a duplicate receipt), no record
    resumed = again.load_pending()
    assert resumed is not None and resumed.frame == b"frame-bytes"
    assert again.load_accepted() is None


@pytest.mark.parametrize("crash_at", ["accepted-9.json", "residual.bin"])
def test_a_secure_record_and_its_residual_are_saved_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    # Prepare: a residual of 1.0; a secure round saves the residual 2.0 with its record, and
    # dies before (accepted.json) or after (residual.bin) the commit point
    DeviceStore(tmp_path).save_residual(_ef(1.0))
    _crash_on(monkeypatch, crash_at)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).save_accepted(AcceptedUpload(9, b"sent", SPEC), _ef(2.0))
    monkeypatch.undo()

    # Execute
    store = DeviceStore(tmp_path)
    record = store.load_accepted()
    loaded = _residual(tmp_path)
    store.forget_accepted(9)

    # Assert: the old pair, or the new pair, never a mix
    if crash_at == "accepted-9.json":
        assert record is None
        np.testing.assert_array_equal(loaded, _ef(1.0).residual)
    else:
        assert record is not None and record.frame == b"sent"
        np.testing.assert_array_equal(loaded, _ef(2.0).residual)
    np.testing.assert_array_equal(_residual(tmp_path), loaded)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residual.bin"]


def test_a_newer_record_is_kept_beside_an_older_one(tmp_path: Path) -> None:
    # Prepare
    store = _accepted(tmp_path, round_id=7)

    # Execute
    store.save_accepted(AcceptedUpload(8, b"other", SPEC))

    # Assert: both held, the oldest first; each settles on its own
    assert store.accepted_rounds() == [7, 8]
    oldest, newer = store.load_accepted(), store.load_accepted(8)
    assert oldest is not None and (oldest.round_id, oldest.frame) == (7, b"frame-bytes")
    assert newer is not None and (newer.round_id, newer.frame) == (8, b"other")
    assert store.return_accepted(7, SENT, SPEC.size) is not None
    assert store.accepted_rounds() == [8]


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: {**m, "round_id": 0},
        lambda m: {**m, "round_id": -1},
        lambda m: {**m, "round_id": "7"},
        lambda m: {**m, "sha256": "0" * 64},
        lambda m: {**m, "bytes": m["bytes"] + 1},
        lambda m: {**m, "spec": "not a layout"},
        lambda m: [m],
    ],
)
def test_a_foreign_or_torn_record_is_no_record(tmp_path: Path, edit: Any) -> None:
    # Prepare: a record edited by something else
    _accepted(tmp_path)
    path = tmp_path / "accepted-7.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    # Execute / Assert: never raises (a check-in must not be blocked by it)
    assert DeviceStore(tmp_path).load_accepted() is None


def test_a_record_that_is_not_json_is_no_record(tmp_path: Path) -> None:
    _accepted(tmp_path)
    (tmp_path / "accepted-7.json").write_bytes(b"\xff{")
    assert DeviceStore(tmp_path).load_accepted() is None


def test_return_checks_the_size(tmp_path: Path) -> None:
    store = _accepted(tmp_path)
    with pytest.raises(ValueError, match="scalars"):
        store.return_accepted(7, SENT[:-1], SPEC.size)
