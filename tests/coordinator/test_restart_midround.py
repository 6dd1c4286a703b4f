"""A coordinator stopped mid-round and started again on the same store (the `Coordinator` over
a `Store`, with a stepped clock): accepted updates are kept and counted once, an open round
resumes and publishes what an uninterrupted run publishes, and a round whose deadline passed
while the coordinator was down closes at once (committed, or abandoned below min_reports)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from compression import UpdateCodec, encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from protocol.messages import RoundStatus, TaskConfig
from tests import _clock

from .test_service_support import SPEC, initial_params, task_config

T0 = 1_800_000_000.0


class Clock(_clock.Clock):
    """Unix seconds that only move when a test says so."""

    start = T0


def _start(db: Path, clock: Clock) -> Coordinator:
    """A coordinator (re)started on `db`: what `serve` does before taking requests."""
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), clock=clock)
    coord.restore()
    return coord


def _frame(cfg: TaskConfig, seed: int) -> bytes:
    u = np.random.default_rng(seed).normal(0, 0.01, SPEC.size).astype(np.float32)
    frame, _ = UpdateCodec(SPEC, cfg.codec.to_config()).encode(
        u, np.random.default_rng(seed + 100), weight=10.0 * (seed + 1)
    )
    return frame


def _open_round(coord: Coordinator, cfg: TaskConfig) -> tuple[int, int]:
    """A task with its model, and its first round opened with devices a and b selected."""
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    coord.check_in("a", task_id)
    answer = coord.check_in("b", task_id)
    assert answer.assignment is not None
    return task_id, answer.assignment.round_id


def _close(coord: Coordinator, task_id: int) -> RoundStatus:
    rt = coord.runtimes[task_id]
    assert rt.current is not None
    round_id = rt.current.round_id
    asyncio.run(coord.close_round(rt))
    return coord.round_status(round_id)


def test_an_open_round_resumes_after_a_restart_and_publishes_the_same_model(
    tmp_path: Path,
) -> None:
    # Prepare: the same uploads to two coordinators; one is stopped after the first upload
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    frames = {"a": _frame(cfg, 0), "b": _frame(cfg, 1)}
    clock = Clock()
    reference = _start(tmp_path / "ref.db", clock)
    ref_task, ref_round = _open_round(reference, cfg)
    reference.submit(ref_round, "a", "key-a", frames["a"])
    reference.submit(ref_round, "b", "key-b", frames["b"])
    expected = _close(reference, ref_task)
    first = _start(tmp_path / "plume.db", clock)
    task_id, round_id = _open_round(first, cfg)
    first.submit(round_id, "a", "key-a", frames["a"])
    # Execute: start again on the same store (the first is dropped unclosed, as if killed)
    clock.now += 5.0
    second = _start(tmp_path / "plume.db", clock)
    current = second.runtimes[task_id].current
    assert current is not None
    resumed = (current.round_id, set(current.uploaded), current.reports)
    retry, _ = second.submit(round_id, "a", "key-a", frames["a"])
    again = second.check_in("a", task_id)
    receipt, to_close = second.submit(round_id, "b", "key-b", frames["b"])
    assert to_close is not None
    got = _close(second, task_id)
    # Assert: a's update was kept and counted once; b completed the round; same model
    assert resumed == (round_id, {"a"}, 1)
    assert retry.duplicate is True and retry.reports == 1
    assert again.assignment is None  # a already reported: not asked to train again
    assert receipt.reports == 2
    assert got.state == "committed" and got.reports == 2 and got.version_after == 1
    assert got.measurements["clients"] == 2 and got.measurements["total_weight"] == 30.0
    assert second.task_status(task_id).model_digest == reference.task_status(ref_task).model_digest
    assert got.measurements == expected.measurements
    assert second.store.count_updates(round_id) == 2


@pytest.mark.parametrize(("min_reports", "state"), [(1, "committed"), (2, "abandoned")])
def test_a_round_whose_deadline_passed_while_down_closes_at_once(
    tmp_path: Path, min_reports: int, state: str
) -> None:
    # Prepare: one of two reports accepted, then the coordinator stops
    cfg = task_config(rounds=2, clients_per_round=2, min_reports=min_reports, deadline_s=30)
    clock = Clock()
    first = _start(tmp_path / "plume.db", clock)
    task_id, round_id = _open_round(first, cfg)
    first.submit(round_id, "a", "key-a", _frame(cfg, 0))
    # Execute: it starts again after the round's deadline
    clock.now += 60.0
    second = _start(tmp_path / "plume.db", clock)
    due = second.pending_closes()
    closed = _close(second, task_id)
    second.check_in("a", task_id)
    next_round = second.check_in("b", task_id)  # the task goes on with its next round
    # Assert: closed with the one accepted report, as the deadline says; nothing lost
    assert [rt.task_id for rt in due] == [task_id]
    assert closed.state == state and closed.reports == 1
    status = second.task_status(task_id)
    assert status.rounds_closed == 1 and status.version == (1 if state == "committed" else 0)
    assert second.store.count_updates(round_id) == 1
    assert next_round.assignment is not None and next_round.assignment.round_id == round_id + 1
