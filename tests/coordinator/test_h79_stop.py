"""`Coordinator.stop_task` (POST /v1/admin/tasks/{id}/stop): a final `stopped` state, persisted.
Its open round is abandoned ("stopped by the operator") with its accepted updates kept; the
model stays the last published one; device requests for the task get 409 `task_refused`; a
stop whose abandon did not reach the store is finished by the round's next close or the next
start. Driven in process on a real store with a stepped clock."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from compression import UpdateCodec, encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service.errors import ApiError
from coordinator.service.rounds import STOP_REASON, Coordinator
from protocol.messages import TaskConfig
from protocol.names import RoundState, TaskState
from tests._clock import Clock

from .test_service_support import SPEC, initial_params, task_config

T0 = 1_800_000_000.0


def _start(db: Path) -> Coordinator:
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), clock=Clock(T0))
    coord.restore()
    return coord


def _frame(cfg: TaskConfig, seed: int) -> bytes:
    u = np.random.default_rng(seed).normal(0, 0.01, SPEC.size).astype(np.float32)
    frame, _ = UpdateCodec(SPEC, cfg.codec.to_config()).encode(
        u, np.random.default_rng(seed + 100), weight=10.0
    )
    return frame


def _task(coord: Coordinator, cfg: TaskConfig) -> int:
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    return task_id


def _open_round(coord: Coordinator, task_id: int, devices: list[str]) -> int:
    """Check every device in until the task's round opens; its id."""
    for d in devices:
        coord.check_in(d, task_id)
    rt = coord.runtimes[task_id]
    assert rt.current is not None
    return rt.current.round_id


def _refused(call: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()  # type: ignore[operator]
    return caught.value


DEVICES = ["a", "b", "c"]


def _plain_world(db: Path) -> tuple[Coordinator, TaskConfig, int, int, str]:
    """A plain task with one committed round (version 1) and a second round open with two of
    its three reports in: (coordinator, config, task, open round, digest of version 1)."""
    cfg = task_config(rounds=5, clients_per_round=3, min_reports=1)
    coord = _start(db)
    task_id = _task(coord, cfg)
    first = _open_round(coord, task_id, DEVICES)
    for i, d in enumerate(DEVICES):
        _, to_close = coord.submit(first, d, f"k1{d}", _frame(cfg, i))
    assert to_close is not None
    asyncio.run(coord.close_round(to_close))
    rt = coord.runtimes[task_id]
    assert rt.version == 1
    second = _open_round(coord, task_id, DEVICES)
    for i, d in enumerate(DEVICES[:2]):
        coord.submit(second, d, f"k2{d}", _frame(cfg, 10 + i))
    return coord, cfg, task_id, second, rt.digest


def test_a_stop_abandons_the_open_round_and_keeps_its_updates_and_the_model(
    tmp_path: Path,
) -> None:
    # Prepare
    coord, cfg, task_id, open_round, digest = _plain_world(tmp_path / "p.db")
    # Execute
    status = coord.stop_task(task_id)
    # Assert: stopped, nothing open, the model still version 1
    assert status.state == TaskState.STOPPED and status.current_round is None
    assert (status.version, status.model_digest) == (1, digest)
    assert (status.rounds_closed, status.rounds_committed) == (2, 1)
    row = coord.store.round(open_round)
    assert row is not None and row.state == RoundState.ABANDONED
    assert row.measurements["abandoned"] == STOP_REASON
    # ... its two accepted updates are still stored, byte for byte
    kept = {u.device_id: u.frame for u in coord.store.updates(open_round)}
    assert kept == {"a": _frame(cfg, 10), "b": _frame(cfg, 11)}
    assert coord.store.task(task_id).state == TaskState.STOPPED  # type: ignore[union-attr]
    # ... and the round tells its devices it was abandoned
    assert coord.upload_outcome(open_round, "a") == "abandoned"


def test_a_stopped_task_refuses_its_devices_with_the_reason(tmp_path: Path) -> None:
    # Prepare
    coord, cfg, task_id, open_round, _ = _plain_world(tmp_path / "p.db")
    coord.stop_task(task_id)
    # Execute / Assert: the third device's upload, pause and resume
    calls = [
        lambda: coord.submit(open_round, "c", "k2c", _frame(cfg, 12)),
        lambda: coord.set_paused(task_id, True),
        lambda: coord.set_paused(task_id, False),
    ]
    for call in calls:
        err = _refused(call)
        assert (err.status, err.reason) == (409, "task_refused")
        assert "stopped by the operator" in err.detail
    # ... a check-in naming it is told the task is over ("end"), with the reason
    answer = coord.check_in("c", task_id)
    assert (answer.action, answer.assignment) == ("end", None)
    assert "stopped by the operator" in answer.detail
    # ... an accepted upload's retry still gets its receipt (it was stored)
    receipt, _ = coord.submit(open_round, "a", "k2a", _frame(cfg, 10))
    assert receipt.duplicate
    # ... a check-in naming no task does not join it
    assert coord.check_in("d").action == "wait"
    assert not coord.runtimes[task_id].pool


def test_stopping_twice_answers_the_status_and_an_unknown_task_is_404(tmp_path: Path) -> None:
    coord, _, task_id, _, _ = _plain_world(tmp_path / "p.db")
    first = coord.stop_task(task_id)
    assert coord.stop_task(task_id) == first
    err = _refused(lambda: coord.stop_task(task_id + 1))
    assert (err.status, err.reason) == (404, "unknown_task")


def test_a_stop_survives_a_restart(tmp_path: Path) -> None:
    # Prepare
    db = tmp_path / "p.db"
    coord, _, task_id, open_round, digest = _plain_world(db)
    coord.stop_task(task_id)
    coord.store.close()
    # Execute
    again = _start(db)
    # Assert: still stopped, no round replayed or opened, devices refused
    status = again.task_status(task_id)
    assert status.state == TaskState.STOPPED and status.current_round is None
    assert (status.version, status.model_digest) == (1, digest)
    assert again.runtimes[task_id].engine.stopped
    for d in DEVICES:
        assert again.check_in(d, task_id).action == "end"
    again.tick()
    assert again.runtimes[task_id].current is None
    assert [u.device_id for u in again.store.updates(open_round)] == ["a", "b"]


def test_a_stop_whose_abandon_fails_is_finished_by_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the store takes the state but refuses the round's abandonment
    db = tmp_path / "p.db"
    coord, _, task_id, open_round, digest = _plain_world(db)

    def refuse(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(coord.store, "abandon", refuse)
    # Execute: the stop is durable, so it answers (no 503 for a change that was made)
    assert coord.stop_task(task_id).state == TaskState.STOPPED
    monkeypatch.undo()
    coord.store.close()
    again = _start(db)
    # Assert: the start abandons the round the stop left open, publishing nothing
    row = again.store.round(open_round)
    assert row is not None and row.state == RoundState.ABANDONED
    assert row.measurements["abandoned"] == STOP_REASON
    status = again.task_status(task_id)
    assert status.state == TaskState.STOPPED and (status.version, status.model_digest) == (
        1,
        digest,
    )
    assert len(again.store.updates(open_round)) == 2


def test_a_stop_whose_abandon_fails_is_finished_by_the_rounds_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: as above, in the same run; the round's deadline then passes
    coord, _, task_id, open_round, digest = _plain_world(tmp_path / "p.db")
    real = coord.store.abandon
    calls = []

    def refuse_once(*args: object, **kwargs: object) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(coord.store, "abandon", refuse_once)
    assert coord.stop_task(task_id).state == TaskState.STOPPED
    rt = coord.runtimes[task_id]
    assert coord.task_status(task_id).state == TaskState.STOPPED
    # Execute: the close at its deadline (two reports >= min_reports: it would commit)
    coord.clock.now += 3600  # type: ignore[attr-defined]
    due = coord.tick()
    assert due == [rt]
    asyncio.run(coord.close_round(rt))
    # Assert: abandoned as stopped, the model untouched
    row = coord.store.round(open_round)
    assert row is not None and row.state == RoundState.ABANDONED
    assert row.measurements["abandoned"] == STOP_REASON
    assert (rt.version, rt.digest, rt.current) == (1, digest, None)
    assert coord.store.task(task_id).version == 1  # type: ignore[union-attr]


def test_a_task_stopped_before_its_model_refuses_the_model_and_stays_stopped(
    tmp_path: Path,
) -> None:
    # Prepare
    db = tmp_path / "p.db"
    coord = _start(db)
    task_id = coord.create_task(task_config())
    # Execute
    status = coord.stop_task(task_id)
    # Assert
    assert status.state == TaskState.STOPPED and status.version == -1
    snapshot = encode_snapshot(initial_params(), SPEC, "fp32")
    err = _refused(lambda: coord.set_initial_model(task_id, snapshot))
    assert err.reason == "task_refused"
    err = _refused(lambda: coord.export_model(task_id, None))
    assert (err.status, err.reason) == (409, "invalid_state")
    coord.store.close()
    again = _start(db)
    assert again.task_status(task_id).state == TaskState.STOPPED
    assert again.stop_task(task_id).state == TaskState.STOPPED
    assert _refused(lambda: again.set_initial_model(task_id, snapshot)).reason == "task_refused"


def test_a_stop_abandons_an_open_secure_round_and_drops_its_key_material(
    tmp_path: Path,
) -> None:
    # Prepare: a secure task whose first round opened (three devices checked in); its first
    # stage, which no device uploads, must still be open at the stop: a long stage timeout
    cfg = task_config(
        rounds=3,
        clients_per_round=3,
        min_reports=3,
        secure={"coord_fraction": 0.5, "stage_timeout_s": 60.0},
    )
    coord = _start(tmp_path / "p.db")
    task_id = _task(coord, cfg)
    round_id = _open_round(coord, task_id, DEVICES)
    rt = coord.runtimes[task_id]
    assert rt.secure is not None and rt.secure.registry.has_round(round_id)
    before = (rt.version, rt.digest)
    # Execute
    status = coord.stop_task(task_id)
    # Assert: abandoned as stopped, its registry state gone, the model unchanged
    assert status.state == TaskState.STOPPED and status.current_round is None
    row = coord.store.round(round_id)
    assert row is not None and row.state == RoundState.ABANDONED
    assert row.measurements["abandoned"] == STOP_REASON
    assert not rt.secure.registry.has_round(round_id)
    assert (rt.version, rt.digest) == before
    # ... its stage requests are refused with the reason
    err = _refused(lambda: coord.secure_setup(round_id, "a"))
    assert (err.status, err.reason) == (409, "task_refused")
