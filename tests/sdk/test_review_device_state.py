"""Review of the device-side state: crash windows in the app directory, corrupt files, and the
error-feedback residual across refused and failed uploads."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sdk.device_store as device_store
from compression import CodecConfig, ErrorFeedback, ModelSpec
from sdk.device import UpdateEncoder
from sdk.device_store import DeviceStore, DeviceStoreError, PendingUpload

SPEC = ModelSpec.from_shapes([("w", (4, 8)), ("b", (4,))])


class _Crash(Exception):
    """Stands in for the process dying at a chosen write."""


def _ef(value: float) -> ErrorFeedback:
    ef = ErrorFeedback(SPEC.size)
    ef.residual = np.full(SPEC.size, value, dtype=np.float32)
    return ef


def _crash_on(
    monkeypatch: pytest.MonkeyPatch, name: str, target: Any = device_store, attr: str = "_write"
) -> None:
    """Make `target.attr` (a function whose first argument is a path: device_store._write by
    default, os.replace, device_store._unlink) crash when that path's file name is `name`."""
    real = getattr(target, attr)

    def crash(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == name:
            raise _Crash(name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(target, attr, crash)


def test_crash_before_residual_rewrite_keeps_new_residual_after_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an old residual on disk; save_pending dies after its commit point
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(1.0))
    _crash_on(monkeypatch, "residual.bin")
    with pytest.raises(_Crash):
        store.save_pending(PendingUpload(3, "k" * 32, b"frame"), _ef(2.0))
    monkeypatch.undo()

    # Execute: the app restarts, re-sends, and the coordinator acknowledges
    again = DeviceStore(tmp_path)
    pending = again.load_pending()
    again.clear_pending()

    # Assert: the residual is the one that assumes the acknowledged frame
    assert pending is not None and pending.frame == b"frame"
    ef = DeviceStore(tmp_path).load_residual(SPEC.size)
    assert ef is not None
    np.testing.assert_array_equal(ef.residual, _ef(2.0).residual)


def test_older_pending_metadata_never_pairs_with_a_new_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an unacknowledged upload A, then B (same frame length) dies mid-save
    store = DeviceStore(tmp_path)
    store.save_pending(PendingUpload(1, "a" * 32, b"AAAAAAAA"), _ef(1.0))
    _crash_on(monkeypatch, "pending.residual")
    with pytest.raises(_Crash):
        store.save_pending(PendingUpload(2, "b" * 32, b"BBBBBBBB"), _ef(2.0))
    monkeypatch.undo()

    # Execute
    pending = DeviceStore(tmp_path).load_pending()

    # Assert: never A's round and idempotency key with B's bytes
    assert pending is None or (pending.key, pending.frame) in {
        ("a" * 32, b"AAAAAAAA"),
        ("b" * 32, b"BBBBBBBB"),
    }


def test_a_residual_saved_while_an_upload_is_pending_is_the_one_loaded(tmp_path: Path) -> None:
    # Prepare: an upload pending, then a later residual (e.g. a secure round) is saved
    store = DeviceStore(tmp_path)
    store.save_pending(PendingUpload(1, "a" * 32, b"frame"), _ef(1.0))
    store.save_residual(_ef(5.0))

    # Execute
    loaded = DeviceStore(tmp_path).load_residual(SPEC.size)
    DeviceStore(tmp_path).clear_pending()
    after_clear = DeviceStore(tmp_path).load_residual(SPEC.size)

    # Assert: the newer residual is neither shadowed nor overwritten by the pending copy
    assert loaded is not None and after_clear is not None
    np.testing.assert_array_equal(loaded.residual, _ef(5.0).residual)
    np.testing.assert_array_equal(after_clear.residual, _ef(5.0).residual)


def test_save_then_ack_round_trip_is_unchanged(tmp_path: Path) -> None:
    # Prepare
    store = DeviceStore(tmp_path)
    pending = PendingUpload(7, "c" * 32, bytes(range(200)), 144)

    # Execute
    store.save_pending(pending, _ef(0.5))
    got = DeviceStore(tmp_path).load_pending()
    ef = DeviceStore(tmp_path).load_residual(SPEC.size)
    store.clear_pending()

    # Assert
    assert got is not None
    assert (got.round_id, got.key, got.frame, got.dense_bytes) == (7, "c" * 32, pending.frame, 144)
    assert ef is not None
    np.testing.assert_array_equal(ef.residual, _ef(0.5).residual)
    assert store.load_pending() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residual.bin"]


def test_a_frame_of_the_right_length_but_other_bytes_is_not_pending(tmp_path: Path) -> None:
    # Prepare
    store = DeviceStore(tmp_path)
    store.save_pending(PendingUpload(1, "a" * 32, b"AAAAAAAA"), _ef(1.0))
    (tmp_path / "pending.frame").write_bytes(b"XXXXXXXX")

    # Execute / Assert
    assert store.load_pending() is None


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "not json",
        "\xff\xfe",
        '{"round_id": "1", "key": "k", "bytes": 5}',
        '{"round_id": -1, "key": "k", "bytes": 5}',
        '{"round_id": 1, "key": 3, "bytes": 5}',
        '{"round_id": 1, "key": "k"}',
        '{"round_id": true, "key": "k", "bytes": 5}',
        '{"round_id": 1, "key": "k", "bytes": 5, "sha256": "zz"}',
    ],
)
def test_foreign_pending_metadata_is_a_typed_error(tmp_path: Path, text: str) -> None:
    # Prepare
    (tmp_path / "pending.json").write_bytes(text.encode("latin-1"))
    (tmp_path / "pending.frame").write_bytes(b"frame")

    # Execute / Assert
    with pytest.raises(DeviceStoreError, match="pending"):
        DeviceStore(tmp_path).load_pending()


@pytest.mark.parametrize("text", ["[1, 2]", "{", "\xff"])
def test_foreign_state_file_is_a_typed_error(tmp_path: Path, text: str) -> None:
    # Prepare
    (tmp_path / "state.json").write_bytes(text.encode("latin-1"))

    # Execute / Assert
    with pytest.raises(DeviceStoreError, match="device state"):
        DeviceStore(tmp_path).state()


@pytest.mark.parametrize("size", [0, 31, 33, 1 << 20])
def test_a_key_file_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    # Prepare
    (tmp_path / "device_key").write_bytes(b"\x01" * size)

    # Execute / Assert
    with pytest.raises(DeviceStoreError, match="key"):
        DeviceStore(tmp_path).private_key()


def test_a_key_directory_is_refused(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "device_key").mkdir()

    # Execute / Assert
    with pytest.raises(DeviceStoreError, match="regular file"):
        DeviceStore(tmp_path).private_key()


def test_the_key_is_owner_only_even_over_a_leftover_temp_file(tmp_path: Path) -> None:
    # Prepare: a world-readable temp file left by some earlier crash
    tmp = tmp_path / "device_key.tmp"
    tmp.write_bytes(b"")
    os.chmod(tmp, 0o644)

    # Execute
    DeviceStore(tmp_path).private_key()

    # Assert
    assert stat.S_IMODE((tmp_path / "device_key").stat().st_mode) == 0o600


def test_a_loose_key_file_is_tightened_to_owner_only(tmp_path: Path) -> None:
    # Prepare
    store = DeviceStore(tmp_path)
    key = store.private_key()
    os.chmod(tmp_path / "device_key", 0o644)

    # Execute
    again = DeviceStore(tmp_path).private_key()

    # Assert
    assert again == key
    assert stat.S_IMODE((tmp_path / "device_key").stat().st_mode) == 0o600


def test_writes_fsync_the_directory_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: record what each fsync targets
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    # Execute
    DeviceStore(tmp_path).save_residual(_ef(1.0))

    # Assert: file data, then the rename, then the directory entry
    assert events[:3] == ["file", "rename", "dir"]


def test_short_os_writes_still_write_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: os.write that accepts at most 7 bytes a call, as it may
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", write)

    # Execute
    DeviceStore(tmp_path).save_residual(_ef(3.0))
    monkeypatch.undo()

    # Assert
    ef = DeviceStore(tmp_path).load_residual(SPEC.size)
    assert ef is not None
    np.testing.assert_array_equal(ef.residual, _ef(3.0).residual)


def test_a_failed_encode_leaves_the_outstanding_upload_restorable() -> None:
    # Prepare: upload 1 encoded (still outstanding), then encoding a NaN delta fails
    rng = np.random.default_rng(11)
    enc = UpdateEncoder(SPEC, CodecConfig(topk=0.25, bits=4))
    d1 = rng.standard_normal(SPEC.size).astype(np.float32)
    enc.encode(d1, np.random.default_rng(1), 1.0)
    bad = d1.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError):
        enc.encode(bad, np.random.default_rng(2), 1.0)

    # Execute: upload 1 is refused
    enc.refused()

    # Assert: the whole of upload 1's u is back in the residual, nothing of the failed one
    np.testing.assert_array_equal(enc.feedback.residual, d1)


def test_refused_restores_u_exactly_and_accepted_keeps_the_step_residual() -> None:
    # Prepare
    rng = np.random.default_rng(12)
    config = CodecConfig(topk=0.25, bits=4)
    start = rng.standard_normal(SPEC.size).astype(np.float32)
    delta = rng.standard_normal(SPEC.size).astype(np.float32)
    refused, accepted = UpdateEncoder(SPEC, config), UpdateEncoder(SPEC, config)
    for enc in (refused, accepted):
        enc.set_feedback(_ef(0.0))
        enc.feedback.residual[:] = start

    # Execute
    f1, _ = refused.encode(delta, np.random.default_rng(3), 2.0)
    f2, _ = accepted.encode(delta, np.random.default_rng(3), 2.0)
    kept = accepted.feedback.residual.copy()
    refused.refused()
    accepted.accepted()
    accepted.refused()  # nothing outstanding: a no-op

    # Assert
    assert f1 == f2
    np.testing.assert_array_equal(refused.feedback.residual, delta + start)
    np.testing.assert_array_equal(accepted.feedback.residual, kept)


def test_hold_refuses_a_vector_of_the_wrong_size() -> None:
    enc = UpdateEncoder(SPEC, CodecConfig(topk=0.25, bits=4))
    with pytest.raises(ValueError, match="scalars"):
        enc.hold(np.zeros(SPEC.size + 1, dtype=np.float32))


def test_pending_json_records_the_frame_digest(tmp_path: Path) -> None:
    # Prepare / Execute
    DeviceStore(tmp_path).save_pending(PendingUpload(1, "a" * 32, b"abc"), _ef(1.0))

    # Assert
    meta = json.loads((tmp_path / "pending.json").read_text())
    assert meta["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _pending_with_crashed_residual_rewrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # residual.bin holds 1.0, the committed pending upload assumes 2.0 (pending.residual)
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(1.0))
    _crash_on(monkeypatch, "residual.bin")
    with pytest.raises(_Crash):
        store.save_pending(PendingUpload(3, "k" * 32, b"frame"), _ef(2.0))
    monkeypatch.undo()


def test_refuse_pending_equals_clear_then_add(tmp_path: Path) -> None:
    # Prepare: two identical directories with a pending upload
    sent = np.random.default_rng(21).standard_normal(SPEC.size).astype(np.float32)
    a, b = DeviceStore(tmp_path / "a"), DeviceStore(tmp_path / "b")
    for store in (a, b):
        store.save_pending(PendingUpload(3, "k" * 32, b"frame"), _ef(0.25))

    # Execute: the two-step way the client settles a refusal, and the one-step way
    a.clear_pending()
    old = a.load_residual(SPEC.size)
    assert old is not None
    old.residual = (old.residual + sent).astype(np.float32)
    a.save_residual(old)
    got = b.refuse_pending(sent, SPEC.size)

    # Assert: same residual values, nothing left pending
    again = DeviceStore(tmp_path / "b").load_residual(SPEC.size)
    assert again is not None
    np.testing.assert_array_equal(got.residual, old.residual)
    np.testing.assert_array_equal(again.residual, old.residual)
    assert b.load_pending() is None
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["residual.bin"]


def test_refusal_interrupted_after_its_commit_keeps_the_sent_mass_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a pending upload whose residual rewrite crashed, then a refusal dies at the rename
    _pending_with_crashed_residual_rewrite(tmp_path, monkeypatch)
    sent = np.full(SPEC.size, 0.5, dtype=np.float32)
    _crash_on(monkeypatch, "pending.refused", os, "replace")
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).refuse_pending(sent, SPEC.size)
    monkeypatch.undo()

    # Execute: restart; nothing pending any more; the next save settles the files
    store = DeviceStore(tmp_path)
    pending = store.load_pending()
    loaded = store.load_residual(SPEC.size)
    store.clear_pending()
    settled = DeviceStore(tmp_path).load_residual(SPEC.size)

    # Assert: 2.0 (the residual assuming the frame) + 0.5 (the refused frame), once
    assert pending is None
    assert loaded is not None and settled is not None
    np.testing.assert_array_equal(loaded.residual, _ef(2.5).residual)
    np.testing.assert_array_equal(settled.residual, _ef(2.5).residual)


def test_refusal_interrupted_before_its_commit_is_redone_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the refusal dies before removing pending.json
    _pending_with_crashed_residual_rewrite(tmp_path, monkeypatch)
    sent = np.full(SPEC.size, 0.5, dtype=np.float32)
    _crash_on(monkeypatch, "pending.json", device_store, "_unlink")
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).refuse_pending(sent, SPEC.size)
    monkeypatch.undo()

    # Execute: restart, the re-sent upload is refused again
    store = DeviceStore(tmp_path)
    pending = store.load_pending()
    before = store.load_residual(SPEC.size)
    after = store.refuse_pending(sent, SPEC.size)

    # Assert: still pending with the untouched residual, then the mass is added once
    assert pending is not None and pending.frame == b"frame"
    assert before is not None
    np.testing.assert_array_equal(before.residual, _ef(2.0).residual)
    np.testing.assert_array_equal(after.residual, _ef(2.5).residual)
    final = DeviceStore(tmp_path).load_residual(SPEC.size)
    assert final is not None
    np.testing.assert_array_equal(final.residual, _ef(2.5).residual)


def test_refuse_pending_checks_the_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scalars"):
        DeviceStore(tmp_path).refuse_pending(np.zeros(3, dtype=np.float32), SPEC.size)


def test_every_file_and_a_new_directory_are_owner_only(tmp_path: Path) -> None:
    # Prepare / Execute: residual, model and pending frame derive from the user's data
    root = tmp_path / "app"
    store = DeviceStore(root)
    store.private_key()
    store.save_model(1, np.zeros(SPEC.size, dtype=np.float32), 0, "d" * 64, True)
    store.save_pending(PendingUpload(1, "a" * 32, b"frame"), _ef(1.0))

    # Assert
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in root.iterdir()}
    assert set(modes) >= {"device_key", "model.f32", "state.json", "pending.frame", "residual.bin"}
    assert set(modes.values()) == {0o600}


@pytest.mark.parametrize("version", ['"3"', "true", "1.5"])
def test_a_foreign_model_version_is_a_typed_error(tmp_path: Path, version: str) -> None:
    # Prepare
    store = DeviceStore(tmp_path)
    store.save_model(1, np.zeros(SPEC.size, dtype=np.float32), 3, "d" * 64, True)
    text = (
        (tmp_path / "state.json")
        .read_text()
        .replace('"model_version": 3', f'"model_version": {version}')
    )
    (tmp_path / "state.json").write_text(text)

    # Execute / Assert
    with pytest.raises(DeviceStoreError, match="model_version"):
        store.load_model(1, SPEC.size)
