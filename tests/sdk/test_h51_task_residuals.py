"""Error feedback per task: the residual a device adds to task T's update, and folds task T's
refused or abandoned uploads back into, is task T's only (residual-<t>.bin in the app
directory). Before, one residual served every task: a task of the same model size sent another
task's residual as its own update, and a task of another size reset it at every switch.

Also: an older SDK's single residual (and its pending upload and records, which name no task)
is claimed by the first task that uses it with a matching size; past MAX_RESIDUALS tasks the
least recently written residual is dropped; every new write point is crashed at."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import sdk.device_store as device_store
from compression import CodecConfig, ModelSpec, UpdateCodec
from protocol.messages import Assignment, TensorShape
from sdk import Client
from sdk.client import ClientError
from sdk.device_store import MAX_RESIDUALS, AcceptedUpload, DeviceStore, PendingUpload

from .test_client import RECEIPT, SPEC, _assignment
from .test_review_device_state import _Crash, _crash_on, _ef

# Another task's model, of another size.
OTHER = ModelSpec.from_shapes([("w", (3, 5)), ("b", (5,))])
DELTA = {
    t: np.random.default_rng(t).standard_normal(SPEC.size).astype(np.float32) for t in (1, 2, 3)
}


def _task(task_id: int, round_id: int, spec: ModelSpec = SPEC) -> Assignment:
    """An assignment of `task_id`'s round `round_id` (top-k 0.5, 8 bits: a residual remains)."""
    return dataclasses.replace(
        _assignment(),
        task_id=task_id,
        round_id=round_id,
        spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
        model_path=f"/v1/tasks/{task_id}/model",
        upload_path=f"/v1/rounds/{round_id}/updates",
    )


def _client(root: Path, handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client("http://coord", str(root), transport=httpx.MockTransport(handler), retries=0)


def _accept(request: httpx.Request) -> httpx.Response:
    round_id = int(request.url.path.split("/")[3])
    return httpx.Response(200, json={**RECEIPT, "round_id": round_id})


def _decoded(frame: bytes, spec: ModelSpec = SPEC) -> np.ndarray:
    return UpdateCodec(spec, CodecConfig.dense()).decode(frame).to_dense()


def _run(client: Client, a: Assignment, delta: np.ndarray, spec: ModelSpec = SPEC) -> bytes:
    """Encode `delta` for `a` and upload it; the frame sent."""
    params = np.zeros(spec.size, np.float32)
    pending = client._core.encode(a, spec, params, params + delta, 8)
    client.upload(pending, spec)
    return pending.frame


# -- the client: one task's residual never reaches another task -------------------------------


def test_a_task_of_the_same_size_does_not_send_another_tasks_residual(tmp_path: Path) -> None:
    # Prepare: task 1's round leaves a residual (top-k keeps half the coordinates)
    client = _client(tmp_path, _accept)
    _run(client, _task(1, 5), DELTA[1])
    residual_1 = client._core._encoders[1].feedback.residual.copy()
    assert np.count_nonzero(residual_1) > 0

    # Execute: task 2, same model size, first round, then a restarted app back in task 1
    frame_2 = _run(client, _task(2, 6), DELTA[2])
    residual_2 = client._core._encoders[2].feedback.residual.copy()
    client.close()
    restarted = _client(tmp_path, _accept)
    frame_1 = _run(restarted, _task(1, 7), DELTA[3])
    residual_1b = restarted._core._encoders[1].feedback.residual

    # Assert: task 2's first update is its own delta only (what it sent plus what it keeps),
    # and task 1 carries on from its own residual, read back from the app directory
    np.testing.assert_allclose(_decoded(frame_2) + residual_2, DELTA[2], atol=1e-6)
    np.testing.assert_allclose(_decoded(frame_1) + residual_1b, DELTA[3] + residual_1, atol=1e-6)
    restarted.close()


def test_a_task_of_another_size_leaves_the_residual_of_the_first(tmp_path: Path) -> None:
    # Prepare: task 1 (SPEC) leaves a residual
    client = _client(tmp_path, _accept)
    _run(client, _task(1, 5), DELTA[1])
    residual_1 = client._core._encoders[1].feedback.residual.copy()

    # Execute: a round of task 2, whose model has another size; then a restarted app's round
    # of task 1
    other = np.linspace(-1, 1, OTHER.size).astype(np.float32)
    _run(client, _task(2, 6, OTHER), other, OTHER)
    client.close()
    restarted = _client(tmp_path, _accept)
    frame_1 = _run(restarted, _task(1, 7), DELTA[3])
    residual_1b = restarted._core._encoders[1].feedback.residual

    # Assert: task 1 carried on from its residual (before, task 2's save replaced it, and task
    # 1 started from zeros); task 2's is kept too
    np.testing.assert_allclose(_decoded(frame_1) + residual_1b, DELTA[3] + residual_1, atol=1e-6)
    assert DeviceStore(tmp_path).load_residual(OTHER.size, 2) is not None
    restarted.close()


def test_a_refused_upload_goes_back_to_its_own_tasks_residual_only(tmp_path: Path) -> None:
    # Prepare: task 2's round is accepted (it keeps a residual); task 1's upload is then
    # refused for good, while task 2's encoder is in memory
    refuse = {"on": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if refuse["on"]:
            return httpx.Response(409, json={"reason": "round_closed", "detail": "late"})
        return _accept(request)

    client = _client(tmp_path, handler)
    _run(client, _task(2, 5), DELTA[2])
    residual_2 = client._core._encoders[2].feedback.residual.copy()
    refuse["on"] = True

    # Execute
    with pytest.raises(ClientError):
        _run(client, _task(1, 6), DELTA[1])

    # Assert: task 1's whole delta is in task 1's residual; task 2's, in memory and stored, is
    # as it was (before, both encoders of the model took task 1's content)
    np.testing.assert_array_equal(client._core._encoders[2].feedback.residual, residual_2)
    held_1 = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    held_2 = DeviceStore(tmp_path).load_residual(SPEC.size, 2)
    assert held_1 is not None and held_2 is not None
    np.testing.assert_allclose(held_1.residual, DELTA[1], atol=1e-6)
    np.testing.assert_array_equal(held_2.residual, residual_2)
    np.testing.assert_allclose(client._core._encoders[1].feedback.residual, DELTA[1], atol=1e-6)
    client.close()


def test_an_abandoned_record_goes_back_to_its_own_tasks_residual_only(tmp_path: Path) -> None:
    # Prepare: task 1's upload of round 5 is accepted (a record), then task 2 runs round 6
    # (its record is committed); the coordinator then says round 5 was abandoned
    outcome = {5: "abandoned", 6: "committed"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/updates"):
            return _accept(request)
        asked = json.loads(request.content).get("awaiting_round")
        body = {"action": "wait", "retry_after_s": 1.0, "round_outcome": outcome[asked]}
        return httpx.Response(200, json=body)

    client = _client(tmp_path, handler)
    frame_1 = _run(client, _task(1, 5), DELTA[1])
    residual_1 = client._core._encoders[1].feedback.residual.copy()
    _run(client, _task(2, 6), DELTA[2])
    residual_2 = client._core._encoders[2].feedback.residual.copy()

    # Execute: two check-ins settle both records
    client.check_in(2)
    client.check_in(2)

    # Assert: round 5's content is back in task 1's residual (= task 1's whole update), task 2's
    # residual is untouched, nothing is left to ask about
    assert DeviceStore(tmp_path).accepted_rounds() == []
    np.testing.assert_array_equal(client._core._encoders[2].feedback.residual, residual_2)
    held_1 = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    held_2 = DeviceStore(tmp_path).load_residual(SPEC.size, 2)
    assert held_1 is not None and held_2 is not None
    np.testing.assert_array_equal(held_1.residual, residual_1 + _decoded(frame_1))
    np.testing.assert_allclose(held_1.residual, DELTA[1], atol=1e-6)
    np.testing.assert_array_equal(held_2.residual, residual_2)
    client.close()


def test_secure_participants_keep_one_residual_per_task(tmp_path: Path) -> None:
    # Prepare: task 1's secure residual is saved (as after a secure round)
    client = _client(tmp_path, _accept)
    p1 = client._core.secure_participant(SPEC.size, 1)
    p1.residual = np.full(SPEC.size, 0.5, np.float32)
    client._core.keep_secure_input(5, SPEC, p1, 1)

    # Execute: task 2's participant of the same size, and a restarted app's task 1 participant
    p2 = client._core.secure_participant(SPEC.size, 2)
    client.close()  # the app restarts (one client per app_dir in a process)
    restarted = _client(tmp_path, _accept)
    again = restarted._core.secure_participant(SPEC.size, 1)

    # Assert: task 2 starts from zeros; task 1 resumes its own residual
    assert p2 is not p1 and not np.any(p2.residual)
    np.testing.assert_array_equal(again.residual, np.full(SPEC.size, 0.5, np.float32))
    assert DeviceStore(tmp_path).load_residual(SPEC.size, 2) is None
    restarted.close()


# -- an older SDK's app directory --------------------------------------------------------------


def _legacy_dir(root: Path, residual: float = 1.0) -> None:
    """What the SDK before this change left: residual.bin (no task), and a record and a
    pending upload that name no task."""
    store = DeviceStore(root)
    store.save_residual(_ef(residual))  # no task: written as residual.bin, no trailer
    store.save_accepted(AcceptedUpload(3, _frame(3), SPEC))
    store.save_pending(PendingUpload(4, "k" * 32, _frame(4), 144, SPEC), _ef(residual))
    assert sorted(p.name for p in root.glob("residual*")) == ["residual.bin"]
    assert "task_id" not in json.loads((root / "pending.json").read_text())


def _frame(r: int) -> bytes:
    content = np.full(SPEC.size, float(r), np.float32)
    frame, _ = UpdateCodec(SPEC, CodecConfig.dense()).encode(
        content, np.random.default_rng(0), weight=1.0
    )
    return frame


def test_the_legacy_residual_goes_to_the_first_task_of_its_size(tmp_path: Path) -> None:
    # Prepare
    _legacy_dir(tmp_path, 1.0)
    store = DeviceStore(tmp_path)

    # Execute: task 9 (another size) asks first, then task 2, then task 3 (same size as 2)
    other = store.load_residual(OTHER.size, 9)
    claimed = store.load_residual(SPEC.size, 2)
    later = store.load_residual(SPEC.size, 3)

    # Assert: task 2 has it, moved to its own file; nobody else gets a copy
    assert other is None and later is None
    assert claimed is not None
    np.testing.assert_array_equal(claimed.residual, _ef(1.0).residual)
    assert not (tmp_path / "residual.bin").exists()
    assert store.legacy_claimer() == 2
    again = DeviceStore(tmp_path).load_residual(SPEC.size, 2)
    assert again is not None
    np.testing.assert_array_equal(again.residual, _ef(1.0).residual)


def test_legacy_uploads_and_records_settle_into_the_claiming_tasks_residual(
    tmp_path: Path,
) -> None:
    # Prepare: the legacy directory; task 2 claims the residual and task 5 holds its own
    _legacy_dir(tmp_path, 1.0)
    store = DeviceStore(tmp_path)
    assert store.load_residual(SPEC.size, 2) is not None
    store.save_residual(_ef(0.5), 5)
    pending = store.load_pending()
    assert pending is not None and pending.task_id is None

    # Execute: the legacy pending upload is refused, the legacy record abandoned
    store.refuse_pending(np.full(SPEC.size, 4.0, np.float32), SPEC.size)
    store.return_accepted(3, np.full(SPEC.size, 3.0, np.float32), SPEC.size)

    # Assert: both went back into task 2's residual (1 + 4 + 3), task 5's is untouched
    held_2 = DeviceStore(tmp_path).load_residual(SPEC.size, 2)
    held_5 = DeviceStore(tmp_path).load_residual(SPEC.size, 5)
    assert held_2 is not None and held_5 is not None
    np.testing.assert_array_equal(held_2.residual, np.full(SPEC.size, 8.0, np.float32))
    np.testing.assert_array_equal(held_5.residual, _ef(0.5).residual)
    assert not (tmp_path / "residual.bin").exists()


def test_legacy_records_before_any_claim_stay_with_the_legacy_residual(tmp_path: Path) -> None:
    # Prepare: the legacy directory, no task has used it yet
    _legacy_dir(tmp_path, 1.0)
    store = DeviceStore(tmp_path)

    # Execute: the record is abandoned, then task 4 claims the residual
    store.return_accepted(3, np.full(SPEC.size, 3.0, np.float32), SPEC.size)
    claimed = store.load_residual(SPEC.size, 4)

    # Assert: nothing was lost: task 4 gets the legacy residual with the record's content
    assert claimed is not None
    np.testing.assert_array_equal(claimed.residual, np.full(SPEC.size, 4.0, np.float32))


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    [
        pytest.param(device_store, "_write", "state.json", id="_write-state.json"),
        pytest.param(os, "replace", "residual.bin", id="replace-residual.bin"),
    ],
)
def test_a_claim_crashed_anywhere_keeps_the_legacy_residual_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: the legacy directory; task 2's claim dies at one write
    _legacy_dir(tmp_path, 1.0)
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).load_residual(SPEC.size, 2)
    monkeypatch.undo()

    # Execute: restart, task 2 asks again
    store = DeviceStore(tmp_path)
    held = store.load_residual(SPEC.size, 2)

    # Assert: task 2 holds the legacy residual, once, in its own file
    assert held is not None
    np.testing.assert_array_equal(held.residual, _ef(1.0).residual)
    assert sorted(p.name for p in tmp_path.glob("residual*")) == ["residual-2.bin"]
    assert store.load_residual(SPEC.size, 3) is None


# -- crash at every write of a keyed step -----------------------------------------------------

_REFUSE_POINTS = [
    (device_store, "_write", "pending.refused"),
    (device_store, "_unlink", "pending.json"),
    (os, "replace", "pending.refused"),
    (device_store, "_unlink", "pending.frame"),
    (device_store, "_unlink", "pending.residual"),
]


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    [pytest.param(t, a, n, id=f"{a}-{n}") for t, a, n in _REFUSE_POINTS],
)
def test_a_refusal_crashed_anywhere_adds_once_to_its_task_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: task 1 holds 0.5; task 2's upload is pending with its residual 1.0; its refusal
    # (content 2.0) dies at one write
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(0.5), 1)
    store.save_pending(PendingUpload(6, "k" * 32, _frame(6), 144, SPEC, 2), _ef(1.0))
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).refuse_pending(np.full(SPEC.size, 2.0, np.float32), SPEC.size)
    monkeypatch.undo()

    # Execute: restart; a refusal not yet committed is retried
    store = DeviceStore(tmp_path)
    if store.load_pending() is not None:
        store.refuse_pending(np.full(SPEC.size, 2.0, np.float32), SPEC.size)

    # Assert: task 2 holds 1.0 + 2.0 once, task 1 still 0.5, nothing staged is left
    held_1, held_2 = store.load_residual(SPEC.size, 1), store.load_residual(SPEC.size, 2)
    assert held_1 is not None and held_2 is not None
    np.testing.assert_array_equal(held_1.residual, _ef(0.5).residual)
    np.testing.assert_array_equal(held_2.residual, _ef(3.0).residual)
    assert store.load_pending() is None
    assert not (tmp_path / "pending.refused").exists()
    assert not (tmp_path / "pending.residual").exists()
    assert sorted(p.name for p in tmp_path.glob("residual*")) == [
        "residual-1.bin",
        "residual-2.bin",
    ]


_SECURE_SAVE_POINTS = [
    (device_store, "_unlink", "accepted-9.json"),
    (device_store, "_write", "accepted-9.frame"),
    (device_store, "_write", "accepted-9.residual"),
    (device_store, "_write", "accepted-9.json"),
    (device_store, "_write", "residual-2.bin"),
    (device_store, "_unlink", "accepted-9.residual"),
]


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    [pytest.param(t, a, n, id=f"{a}-{n}") for t, a, n in _SECURE_SAVE_POINTS],
)
def test_a_secure_save_crashed_anywhere_keeps_old_or_new_of_its_task_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: tasks 1 and 2 hold 0.5 and 1.0; task 2's secure round saves record 9 with its
    # residual 2.0 and dies at one write
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(0.5), 1)
    store.save_residual(_ef(1.0), 2)
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).save_accepted(AcceptedUpload(9, _frame(9), SPEC, 2), _ef(2.0))
    monkeypatch.undo()

    # Execute: restart
    store = DeviceStore(tmp_path)
    held_1, held_2 = store.load_residual(SPEC.size, 1), store.load_residual(SPEC.size, 2)

    # Assert: record and task 2's new residual together, or neither; task 1 untouched
    assert held_1 is not None and held_2 is not None
    np.testing.assert_array_equal(held_1.residual, _ef(0.5).residual)
    record = store.load_accepted(9)
    if record is not None:
        assert record.task_id == 2
        np.testing.assert_array_equal(held_2.residual, _ef(2.0).residual)
    else:
        np.testing.assert_array_equal(held_2.residual, _ef(1.0).residual)
    assert not (tmp_path / "accepted-9.residual").exists()


def test_points_cover_every_write_of_a_keyed_refusal_and_secure_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The crash points above are every write these steps make: recorded here, so a new write
    # without a crash test fails
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(0.5), 1)
    store.save_pending(PendingUpload(6, "k" * 32, _frame(6), 144, SPEC, 2), _ef(1.0))
    seen: list[tuple[str, str]] = []

    def spy(attr: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if not Path(path).name.endswith(".tmp"):  # _write's own rename is its write
                seen.append((attr, Path(path).name))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(device_store, "_write", spy("_write", device_store._write))
    monkeypatch.setattr(device_store, "_unlink", spy("_unlink", device_store._unlink))
    monkeypatch.setattr(os, "replace", spy("replace", os.replace))
    DeviceStore(tmp_path).refuse_pending(np.full(SPEC.size, 2.0, np.float32), SPEC.size)
    refusal = list(seen)
    seen.clear()
    DeviceStore(tmp_path).save_accepted(AcceptedUpload(9, _frame(9), SPEC, 2), _ef(2.0))
    monkeypatch.undo()

    assert refusal == [(a, n) for _, a, n in _REFUSE_POINTS]
    assert seen == [(a, n) for _, a, n in _SECURE_SAVE_POINTS]


def test_points_cover_every_write_of_a_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _legacy_dir(tmp_path, 1.0)
    store = DeviceStore(tmp_path)
    store.clear_pending()
    seen: list[tuple[str, str]] = []

    def spy(attr: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if not Path(path).name.endswith(".tmp"):  # _write's own rename is its write
                seen.append((attr, Path(path).name))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(device_store, "_write", spy("_write", device_store._write))
    monkeypatch.setattr(device_store, "_unlink", spy("_unlink", device_store._unlink))
    monkeypatch.setattr(os, "replace", spy("replace", os.replace))
    store.load_residual(SPEC.size, 2)
    monkeypatch.undo()

    assert seen == [("_write", "state.json"), ("replace", "residual.bin")]


# -- the bound on residuals kept --------------------------------------------------------------


def _fill(root: Path, tasks: range) -> DeviceStore:
    """Residuals of `tasks`, written in that order (mtimes one second apart)."""
    store = DeviceStore(root)
    for i, t in enumerate(tasks):
        store.save_residual(_ef(float(t)), t)
        os.utime(root / f"residual-{t}.bin", ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    return store


def test_past_the_bound_the_least_recently_written_residual_is_dropped(tmp_path: Path) -> None:
    # Prepare: MAX_RESIDUALS tasks; task 1 (the oldest) is written again, so task 2 is oldest
    assert MAX_RESIDUALS == 8
    store = _fill(tmp_path, range(1, 9))
    store.save_residual(_ef(11.0), 1)

    # Execute: a ninth task
    store.save_residual(_ef(9.0), 9)

    # Assert: task 2's residual is gone, every other is whole
    names = sorted(p.name for p in tmp_path.glob("residual-*.bin"))
    assert len(names) == MAX_RESIDUALS and "residual-2.bin" not in names
    assert store.load_residual(SPEC.size, 2) is None
    for t, want in [(1, 11.0), *[(t, float(t)) for t in range(3, 10)]]:
        held = store.load_residual(SPEC.size, t)
        assert held is not None
        np.testing.assert_array_equal(held.residual, _ef(want).residual)


def test_an_eviction_crashed_keeps_one_more_residual_until_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: MAX_RESIDUALS tasks; the ninth's save dies as it drops task 1's
    store = _fill(tmp_path, range(1, 9))
    _crash_on(monkeypatch, "residual-1.bin", device_store, "_unlink")
    with pytest.raises(_Crash):
        store.save_residual(_ef(9.0), 9)
    monkeypatch.undo()

    # Execute: restart; the next write of a residual
    store = DeviceStore(tmp_path)
    held_9 = store.load_residual(SPEC.size, 9)
    store.save_residual(_ef(3.5), 3)

    # Assert: task 9's residual was saved; the next write drops task 1's
    assert held_9 is not None
    np.testing.assert_array_equal(held_9.residual, _ef(9.0).residual)
    names = sorted(p.name for p in tmp_path.glob("residual-*.bin"))
    assert len(names) == MAX_RESIDUALS and "residual-1.bin" not in names


def test_a_record_of_an_evicted_task_starts_its_residual_again(tmp_path: Path) -> None:
    # Prepare: task 1's record of round 5, then MAX_RESIDUALS other tasks drop its residual
    store = DeviceStore(tmp_path)
    store.save_accepted(AcceptedUpload(5, _frame(5), SPEC, 1), _ef(0.5))
    os.utime(tmp_path / "residual-1.bin", ns=(10**18 - 10**9, 10**18 - 10**9))
    _fill(tmp_path, range(2, 10))
    assert store.load_residual(SPEC.size, 1) is None

    # Execute: round 5 abandoned
    ef = store.return_accepted(5, np.full(SPEC.size, 5.0, np.float32), SPEC.size)

    # Assert: the record's content is not lost: it starts task 1's residual again
    assert ef is not None
    held = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert held is not None
    np.testing.assert_array_equal(held.residual, np.full(SPEC.size, 5.0, np.float32))


# -- foreign files ----------------------------------------------------------------------------


def test_a_residual_file_with_a_foreign_trailer_is_not_used(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(1.0), 3)
    raw = bytearray((tmp_path / "residual-3.bin").read_bytes())
    raw[-16:-8] = b"NOTATASK"
    (tmp_path / "residual-3.bin").write_bytes(bytes(raw))

    assert store.load_residual(SPEC.size, 3) is None


def test_a_pending_upload_naming_a_foreign_task_id_is_refused(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    store.save_pending(PendingUpload(6, "k" * 32, _frame(6), 144, SPEC, 2), _ef(1.0))
    meta = json.loads((tmp_path / "pending.json").read_text())
    del meta["check"]  # as an SDK before the check wrote it (with it: test_s43_pending_check)
    meta["task_id"] = "two"
    (tmp_path / "pending.json").write_text(json.dumps(meta))
    assert hashlib.sha256(_frame(6)).hexdigest() == meta["sha256"]

    with pytest.raises(device_store.DeviceStoreError, match="task_id"):
        store.load_pending()


# -- a keyed pending save and a keyed return, crashed anywhere ---------------------------------

_SAVE_PENDING_POINTS = [
    (device_store, "_unlink", "pending.json"),
    (device_store, "_write", "pending.frame"),
    (device_store, "_write", "pending.residual"),
    (device_store, "_write", "pending.json"),
    (device_store, "_write", "residual-2.bin"),
    (device_store, "_unlink", "pending.residual"),
]
_RETURN_POINTS = [
    (device_store, "_write", "accepted-8.settled"),
    (device_store, "_unlink", "accepted-8.json"),
    (os, "replace", "accepted-8.settled"),
    (device_store, "_unlink", "accepted-8.frame"),
]


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    [pytest.param(t, a, n, id=f"{a}-{n}") for t, a, n in _SAVE_PENDING_POINTS],
)
def test_a_pending_save_crashed_anywhere_keeps_old_or_new_of_its_task_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: tasks 1 and 2 hold 0.5 and 1.0; task 2's encode saves its upload with 2.0
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(0.5), 1)
    store.save_residual(_ef(1.0), 2)
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).save_pending(
            PendingUpload(6, "k" * 32, _frame(6), 144, SPEC, 2), _ef(2.0)
        )
    monkeypatch.undo()

    # Execute: restart
    store = DeviceStore(tmp_path)
    pending = store.load_pending()
    held_1, held_2 = store.load_residual(SPEC.size, 1), store.load_residual(SPEC.size, 2)

    # Assert: the upload with task 2's new residual, or neither; task 1 untouched
    assert held_1 is not None and held_2 is not None
    np.testing.assert_array_equal(held_1.residual, _ef(0.5).residual)
    if pending is not None:
        assert pending.task_id == 2 and pending.frame == _frame(6)
        np.testing.assert_array_equal(held_2.residual, _ef(2.0).residual)
    else:
        np.testing.assert_array_equal(held_2.residual, _ef(1.0).residual)


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    [pytest.param(t, a, n, id=f"{a}-{n}") for t, a, n in _RETURN_POINTS],
)
def test_a_return_crashed_anywhere_adds_once_to_its_task_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: task 1 holds 0.5, task 2 holds 1.0 and a record of round 8; the record's return
    # (content 2.0) dies at one write
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(0.5), 1)
    store.save_accepted(AcceptedUpload(8, _frame(8), SPEC, 2), _ef(1.0))
    sent = np.full(SPEC.size, 2.0, np.float32)
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).return_accepted(8, sent, SPEC.size)
    monkeypatch.undo()

    # Execute: restart; the next answer settles it again
    store = DeviceStore(tmp_path)
    store.return_accepted(8, sent, SPEC.size)

    # Assert: task 2 holds 1.0 + 2.0 once, task 1 still 0.5, nothing staged is left
    held_1, held_2 = store.load_residual(SPEC.size, 1), store.load_residual(SPEC.size, 2)
    assert held_1 is not None and held_2 is not None
    np.testing.assert_array_equal(held_1.residual, _ef(0.5).residual)
    np.testing.assert_array_equal(held_2.residual, _ef(3.0).residual)
    assert store.accepted_rounds() == []
    assert not list(tmp_path.glob("accepted-*"))


def test_points_cover_every_write_of_a_keyed_pending_save_and_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(0.5), 1)
    store.save_residual(_ef(1.0), 2)
    seen: list[tuple[str, str]] = []

    def spy(attr: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if not Path(path).name.endswith(".tmp"):  # _write's own rename is its write
                seen.append((attr, Path(path).name))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(device_store, "_write", spy("_write", device_store._write))
    monkeypatch.setattr(device_store, "_unlink", spy("_unlink", device_store._unlink))
    monkeypatch.setattr(os, "replace", spy("replace", os.replace))
    DeviceStore(tmp_path).save_pending(
        PendingUpload(6, "k" * 32, _frame(6), 144, SPEC, 2), _ef(2.0)
    )
    saved = list(seen)
    monkeypatch.undo()
    DeviceStore(tmp_path).clear_pending()
    DeviceStore(tmp_path).save_accepted(AcceptedUpload(8, _frame(8), SPEC, 2))
    seen.clear()
    monkeypatch.setattr(device_store, "_write", spy("_write", device_store._write))
    monkeypatch.setattr(device_store, "_unlink", spy("_unlink", device_store._unlink))
    monkeypatch.setattr(os, "replace", spy("replace", os.replace))
    DeviceStore(tmp_path).return_accepted(8, np.full(SPEC.size, 2.0, np.float32), SPEC.size)
    monkeypatch.undo()

    assert saved == [(a, n) for _, a, n in _SAVE_PENDING_POINTS]
    assert seen == [(a, n) for _, a, n in _RETURN_POINTS]


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    [
        pytest.param(device_store, "_write", "state.json", id="_write-state.json"),
        pytest.param(os, "replace", "residual.bin", id="replace-residual.bin"),
        *[pytest.param(t, a, n, id=f"{a}-{n}") for t, a, n in _RETURN_POINTS],
    ],
)
def test_a_return_that_claims_the_legacy_residual_crashed_anywhere_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: an older SDK's residual (1.0); task 2's record of round 8 (task 2 holds no
    # residual) is returned with 2.0, claiming the old residual first, and dies at one write
    DeviceStore(tmp_path).save_residual(_ef(1.0))
    DeviceStore(tmp_path).save_accepted(AcceptedUpload(8, _frame(8), SPEC, 2))
    sent = np.full(SPEC.size, 2.0, np.float32)
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).return_accepted(8, sent, SPEC.size)
    monkeypatch.undo()

    # Execute: restart; the next answer settles it again
    store = DeviceStore(tmp_path)
    store.return_accepted(8, sent, SPEC.size)

    # Assert: task 2 holds the old residual plus the record, once; no other copy is left
    held = store.load_residual(SPEC.size, 2)
    assert held is not None
    np.testing.assert_array_equal(held.residual, _ef(3.0).residual)
    assert sorted(p.name for p in tmp_path.glob("residual*")) == ["residual-2.bin"]
    assert store.load_residual(SPEC.size, 3) is None


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    [pytest.param(t, a, n, id=f"{a}-{n}") for t, a, n in _REFUSE_POINTS],
)
def test_a_legacy_refusal_after_the_claim_crashed_anywhere_goes_to_the_claimer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: the older SDK's directory (residual 1.0, a pending upload naming no task); task
    # 2 claims the residual, task 5 holds its own; the old upload's refusal (4.0) dies
    _legacy_dir(tmp_path, 1.0)
    store = DeviceStore(tmp_path)
    assert store.load_residual(SPEC.size, 2) is not None
    store.save_residual(_ef(0.5), 5)
    sent = np.full(SPEC.size, 4.0, np.float32)
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).refuse_pending(sent, SPEC.size)
    monkeypatch.undo()

    # Execute: restart; a refusal not yet committed is retried
    store = DeviceStore(tmp_path)
    if store.load_pending() is not None:
        store.refuse_pending(sent, SPEC.size)

    # Assert: the claiming task holds 1.0 + 4.0 once; task 5 untouched; no residual.bin again
    held_2, held_5 = store.load_residual(SPEC.size, 2), store.load_residual(SPEC.size, 5)
    assert held_2 is not None and held_5 is not None
    np.testing.assert_array_equal(held_2.residual, _ef(5.0).residual)
    np.testing.assert_array_equal(held_5.residual, _ef(0.5).residual)
    assert sorted(p.name for p in tmp_path.glob("residual*")) == [
        "residual-2.bin",
        "residual-5.bin",
    ]
