"""Regressions found by the model in test_h53_ef_model.py: two crash windows of the app
directory open at once, and what each step does when the directory does not hold the upload
it is told about."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

import sdk.device_store as device_store
from sdk.device_store import AcceptedUpload, DeviceStore, PendingUpload

from .test_client import SPEC
from .test_h51_task_residuals import DELTA, _accept, _client, _decoded, _task
from .test_review_device_state import _Crash, _crash_on, _ef


def _pending(round_id: int, task_id: int | None = 1) -> PendingUpload:
    return PendingUpload(round_id, f"{round_id:032d}", b"\x00" * 8, 0, SPEC, task_id)


def test_a_secure_save_crashed_while_a_pending_window_is_open_keeps_its_residual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: task 1's pending save dies after its commit point, before it rewrote
    # residual-1.bin (pending.residual holds the residual); the app restarts and a secure round
    # of task 1 saves its record and residual, dying after the record's commit point too
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(1.0), 1)
    _crash_on(monkeypatch, "residual-1.bin")
    with pytest.raises(_Crash):
        store.save_pending(_pending(5), _ef(2.0))
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).save_accepted(AcceptedUpload(6, b"secure", SPEC, 1), _ef(3.0))
    monkeypatch.undo()

    # Execute: the app restarts; later the pending upload is acknowledged
    again = DeviceStore(tmp_path)
    loaded = again.load_residual(SPEC.size, 1)
    again.clear_pending()
    after = DeviceStore(tmp_path).load_residual(SPEC.size, 1)

    # Assert: the residual is the secure round's, which assumes both the pending upload and
    # the record (before, the older pending.residual shadowed it, then replaced it)
    assert DeviceStore(tmp_path).load_accepted(6) is not None
    assert loaded is not None and after is not None
    np.testing.assert_array_equal(loaded.residual, _ef(3.0).residual)
    np.testing.assert_array_equal(after.residual, _ef(3.0).residual)


def test_opening_the_directory_closes_a_pending_save_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a pending save dies after its commit point
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(1.0), 1)
    _crash_on(monkeypatch, "residual-1.bin")
    with pytest.raises(_Crash):
        store.save_pending(_pending(5), _ef(2.0))
    monkeypatch.undo()

    # Execute
    DeviceStore(tmp_path)

    # Assert: the window is closed (task 1's file holds the residual), the upload still pending
    assert not (tmp_path / "pending.residual").exists()
    assert device_store._residual_task(tmp_path / "residual-1.bin") == 1
    ef = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert ef is not None
    np.testing.assert_array_equal(ef.residual, _ef(2.0).residual)
    assert DeviceStore(tmp_path).load_pending() is not None


def test_an_acceptance_crashed_before_the_pending_copy_went_is_settled_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: task 1's upload to round 5 is accepted; the app dies after the record was
    # committed, before the pending copy was forgotten. The coordinator replays its receipt for
    # the same idempotency key (as it does, before any round check) and answers that round 5
    # was abandoned
    def coordinator(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/checkin"):
            asked = json.loads(request.content).get("awaiting_round")
            body = {"action": "wait", "retry_after_s": 1.0, "assignment": None}
            if asked is not None:
                body["round_outcome"] = "abandoned"
            return httpx.Response(200, json=body)
        return _accept(request)

    client = _client(tmp_path, coordinator)
    params = np.zeros(SPEC.size, np.float32)
    pending = client._core.encode(_task(1, 5), SPEC, params, params + DELTA[1], 8)
    kept = client._core._encoders[1].feedback.residual.copy()
    _crash_on(monkeypatch, "pending.json", device_store, "_unlink")
    with pytest.raises(_Crash):
        client.upload(pending, SPEC)
    monkeypatch.undo()
    client.close()

    # Execute: the restarted app checks in first (as mobile_sim's fleet does), then trains,
    # which settles a pending upload first, then checks in again
    again = _client(tmp_path, coordinator)
    again.check_in(1)
    again.resume_pending()
    again.check_in(1)
    again.close()

    # Assert: the abandoned upload's content is back in task 1's residual once (before, the
    # re-send of the pending copy made a second record of round 5, returned a second time)
    ef = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert ef is not None
    np.testing.assert_allclose(ef.residual, kept + _decoded(pending.frame), atol=1e-6)
    assert DeviceStore(tmp_path).load_pending() is None
    assert DeviceStore(tmp_path).accepted_rounds() == []


def test_temp_files_a_crash_left_are_removed_when_the_directory_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: crashes between a temp file's write and its rename, for the records of three
    # rounds (each leaves accepted-<r>.frame.tmp, a name no later write reuses)
    store = DeviceStore(tmp_path)
    real = device_store.os.replace

    def crash(src: object, dst: object) -> None:
        if str(src).endswith(".frame.tmp"):
            raise _Crash(str(src))
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(device_store.os, "replace", crash)
    for r in (5, 6, 7):
        with pytest.raises(_Crash):
            store.save_accepted(AcceptedUpload(r, b"frame", SPEC, 1))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == [
        f"accepted-{r}.frame.tmp" for r in (5, 6, 7)
    ]

    # Execute
    DeviceStore(tmp_path)

    # Assert: none is left (before, each stayed for the app's life: disk use grew by one
    # frame per such crash)
    assert list(tmp_path.glob("*.tmp")) == []


def test_temp_files_of_other_names_are_left_alone(tmp_path: Path) -> None:
    # Prepare: a file the store never writes, ending in .tmp (an app's own, say)
    (tmp_path / "notes.txt.tmp").write_bytes(b"mine")
    (tmp_path / "pending.json.tmp").write_bytes(b"{")

    # Execute
    DeviceStore(tmp_path)

    # Assert
    assert (tmp_path / "notes.txt.tmp").read_bytes() == b"mine"
    assert not (tmp_path / "pending.json.tmp").exists()
