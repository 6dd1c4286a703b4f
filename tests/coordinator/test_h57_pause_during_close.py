"""A pause or resume the admin sends while a round closes is not undone by that close.

The close reads the task's state on the worker thread and then commits the round with it; an
admin request handled on the event loop in between wrote the other state to the store, and the
close's commit wrote the stale one back: the task read `paused` until the next restart, then
ran again (or the other way round)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compression import UpdateCodec, encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from protocol.messages import TaskConfig
from tests import _clock

from .test_service_support import SPEC, initial_params, task_config


class Clock(_clock.Clock):
    start = 1_800_000_000.0


def _start(db: Path, clock: Clock) -> Coordinator:
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), clock=clock)
    coord.restore()
    return coord


def _frame(cfg: TaskConfig) -> bytes:
    u = np.random.default_rng(0).normal(0, 0.01, SPEC.size).astype(np.float32)
    frame, _ = UpdateCodec(SPEC, cfg.codec.to_config()).encode(
        u, np.random.default_rng(1), weight=10.0
    )
    return frame


def _while_publishing(coord: Coordinator, action: Callable[[], Any]) -> None:
    """Run `action` once, inside the close, after it read the task's state and before its
    commit (`Store.publish` or `Store.abandon`): where an admin request handled meanwhile on
    the event loop lands."""
    done: list[bool] = []
    for name in ("publish", "abandon"):
        real = getattr(coord.store, name)

        def hooked(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            if not done:
                done.append(True)
                action()
            return _real(*args, **kwargs)

        setattr(coord.store, name, hooked)


@pytest.mark.parametrize("committed", [True, False])
def test_a_pause_during_a_close_stays_paused_in_memory_and_after_a_restart(
    tmp_path: Path, committed: bool
) -> None:
    # Prepare: round 1 of 3 open with one device; it commits (one upload) or is abandoned
    # (none, min_reports 1, at its deadline)
    clock = Clock()
    cfg = task_config(rounds=3, clients_per_round=1, min_reports=1)
    coord = _start(tmp_path / "p.db", clock)
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    answer = coord.check_in("a", task_id)
    assert answer.assignment is not None
    if committed:
        coord.submit(answer.assignment.round_id, "a", "k", _frame(cfg))
    else:
        clock.now += cfg.deadline_s + 1
    rt = coord.runtimes[task_id]
    _while_publishing(coord, lambda: coord.set_paused(task_id, True))
    # Execute
    asyncio.run(coord.close_round(rt))
    # Assert: paused in memory, in the store, and after a restart
    assert coord.task_status(task_id).state == "paused"
    assert coord.store.task(task_id).state == "paused"  # type: ignore[union-attr]
    coord.store.close()
    again = _start(tmp_path / "p.db", clock)
    assert again.task_status(task_id).state == "paused"
    assert again.task_status(task_id).rounds_closed == 1


def test_a_resume_during_a_close_stays_active_after_a_restart(tmp_path: Path) -> None:
    # Prepare: a paused task whose round is still closing
    clock = Clock()
    cfg = task_config(rounds=3, clients_per_round=1)
    coord = _start(tmp_path / "p.db", clock)
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    answer = coord.check_in("a", task_id)
    assert answer.assignment is not None
    coord.submit(answer.assignment.round_id, "a", "k", _frame(cfg))
    coord.set_paused(task_id, True)
    rt = coord.runtimes[task_id]
    _while_publishing(coord, lambda: coord.set_paused(task_id, False))
    # Execute
    asyncio.run(coord.close_round(rt))
    coord.store.close()
    # Assert
    assert _start(tmp_path / "p.db", clock).task_status(task_id).state == "active"


def test_the_last_round_still_finishes_an_active_task(tmp_path: Path) -> None:
    # The state a close writes is still written when nothing raced it: active -> done.
    clock = Clock()
    cfg = task_config(rounds=1, clients_per_round=1)
    coord = _start(tmp_path / "p.db", clock)
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    answer = coord.check_in("a", task_id)
    assert answer.assignment is not None
    coord.submit(answer.assignment.round_id, "a", "k", _frame(cfg))
    asyncio.run(coord.close_round(coord.runtimes[task_id]))
    assert coord.store.task(task_id).state == "done"  # type: ignore[union-attr]
    assert coord.task_status(task_id).state == "done"


def paused_last_round(db: Path, clock: Clock) -> tuple[Coordinator, int]:
    """A one-round task paused while its round runs, its one upload in: the round's close is
    next. The coordinator and the task's id."""
    cfg = task_config(rounds=1, clients_per_round=1)
    coord = _start(db, clock)
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    answer = coord.check_in("a", task_id)
    assert answer.assignment is not None
    coord.set_paused(task_id, True)
    coord.submit(answer.assignment.round_id, "a", "k", _frame(cfg))
    return coord, task_id


def test_a_task_paused_through_its_last_round_is_done_when_resumed(tmp_path: Path) -> None:
    # Prepare: paused while its only round runs; the round then commits
    clock = Clock()
    coord, task_id = paused_last_round(tmp_path / "p.db", clock)
    asyncio.run(coord.close_round(coord.runtimes[task_id]))
    assert coord.task_status(task_id).state == "paused"
    # Execute
    status = coord.set_paused(task_id, False)
    # Assert: done (it has no round left to run), in the store too; not active forever
    assert status.state == "done" and status.rounds_closed == 1
    coord.store.close()
    assert _start(tmp_path / "p.db", clock).task_status(task_id).state == "done"


def test_a_device_selected_before_a_pause_still_gets_its_assignment(tmp_path: Path) -> None:
    # Prepare: b's check-in opens the round with a and b selected; a learns it at its next
    # check-in, which comes after the admin paused the task
    clock = Clock()
    cfg = task_config(rounds=3, clients_per_round=2, min_reports=2)
    coord = _start(tmp_path / "p.db", clock)
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    assert coord.check_in("a", task_id).assignment is None
    opened = coord.check_in("b", task_id).assignment
    assert opened is not None
    coord.set_paused(task_id, True)
    # Execute
    answer = coord.check_in("a", task_id)
    anywhere = coord.check_in("a")  # a check-in naming no task finds it too
    # Assert: the round in flight can still gather its cohort; a new device is not pooled
    assert answer.assignment is not None and answer.assignment.round_id == opened.round_id
    assert anywhere.assignment is not None
    assert coord.check_in("c", task_id).assignment is None
    assert coord.task_status(task_id).pool == 0
    coord.submit(opened.round_id, "a", "ka", _frame(cfg))
    _, to_close = coord.submit(opened.round_id, "b", "kb", _frame(cfg))
    assert to_close is not None
    asyncio.run(coord.close_round(to_close))
    status = coord.task_status(task_id)
    assert (status.state, status.rounds_committed, status.current_round) == ("paused", 1, None)
