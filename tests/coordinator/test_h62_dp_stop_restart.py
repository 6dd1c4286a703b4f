"""A dp task whose epsilon budget ran out stays stopped across a restart. The engine stops
when a round's measurements say `budget_exhausted`, but a restarted coordinator built a fresh
engine that had forgotten it: a task paused while that round was in flight (so the close left
it paused, not done) could be resumed after a restart into rounds that each trained its
devices and were then abandoned (DPMean refuses a round past the budget)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from compression import encode_snapshot

from .test_restart_midround import SPEC, Clock, _frame, _start
from .test_service_support import initial_params, task_config

# z=2 over population=2, sample=2: round 1 reaches epsilon 4.73, round 2 would reach 7.08.
DP = "dp:z=2,clip=1,population=2,sample=2,eps=5+fedavg"


def test_a_task_stopped_by_its_budget_is_done_when_resumed_after_a_restart(
    tmp_path: Path,
) -> None:
    # Prepare: round 1 opens, the task is paused, the round commits and exhausts the budget
    db = tmp_path / "plume.db"
    clock = Clock()
    coord = _start(db, clock)
    cfg = task_config(rounds=5, clients_per_round=2, aggregator=DP)
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    a, b = "a" * 32, "b" * 32
    coord.check_in(a, task_id)
    answer = coord.check_in(b, task_id)
    assert answer.assignment is not None
    round_id = answer.assignment.round_id
    coord.set_paused(task_id, True)
    coord.submit(round_id, a, "ka", _frame(cfg, 0))
    _, to_close = coord.submit(round_id, b, "kb", _frame(cfg, 1))
    assert to_close is not None
    outcome = asyncio.run(coord.close_round(to_close))
    assert outcome is not None and outcome.committed
    assert coord.runtimes[task_id].engine.stopped
    assert coord.task_status(task_id).state == "paused"
    coord.store.close()
    # Execute: restart, then resume
    coord = _start(db, clock)
    resumed = coord.set_paused(task_id, False)
    coord.check_in(a, task_id)
    coord.check_in(b, task_id)
    # Assert: done, as without the restart; no round opens
    assert resumed.state == "done"
    assert coord.runtimes[task_id].current is None
    assert coord.task_status(task_id).rounds_closed == 1
