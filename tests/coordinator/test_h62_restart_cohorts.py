"""A seeded task's cohorts after a restart are the ones an uninterrupted run draws. The engine
draws round r's cohort from (task seed, r), but a restarted coordinator numbered its engine's
rounds from 1 again: its next round drew the cohort of the task's first round (and a
coordinator restarted before every round picked the same devices every time)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from compression import encode_snapshot
from coordinator.service.rounds import Coordinator

from .test_restart_midround import SPEC, Clock, _start
from .test_service_support import initial_params, task_config

POOL = [f"{i:032x}" for i in range(1, 9)]


def _open_next(coord: Coordinator, task_id: int) -> frozenset[str]:
    """Fill the task's pool with the same devices and open its next round; its cohort."""
    rt = coord.runtimes[task_id]
    assert rt.current is None
    rt.pool.clear()
    for d in POOL:
        rt.pool[d] = coord.clock()
    coord.tick()
    assert rt.current is not None
    return rt.current.selected


def _close(coord: Coordinator, task_id: int) -> None:
    asyncio.run(coord.close_round(coord.runtimes[task_id]))  # no reports: abandoned


def _run(db: Path, restart_before: set[int], replay_at: int | None = None) -> list[frozenset[str]]:
    """Four rounds' cohorts; restarted before the rounds in `restart_before`, and (replay_at)
    once while that round is open, so that the start replays it."""
    clock = Clock()
    coord = _start(db, clock)
    task_id = coord.create_task(task_config(rounds=4, clients_per_round=2, seed=5))
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    cohorts = []
    for r in range(1, 5):
        if r in restart_before:
            coord.store.close()
            coord = _start(db, clock)
        cohorts.append(_open_next(coord, task_id))
        if r == replay_at:
            coord.store.close()
            coord = _start(db, clock)
            assert coord.runtimes[task_id].current is not None
            assert coord.runtimes[task_id].current.selected == cohorts[-1]
        _close(coord, task_id)
    coord.store.close()
    return cohorts


def test_cohorts_after_restarts_are_those_of_an_uninterrupted_run(tmp_path: Path) -> None:
    # Prepare / Execute
    reference = _run(tmp_path / "ref.db", set())
    restarted = _run(tmp_path / "restarted.db", {2, 3, 4})
    replayed = _run(tmp_path / "replayed.db", {4}, replay_at=2)
    # Assert: the draws differ between rounds (so the comparison means something) and agree
    assert len(set(reference)) > 1
    assert restarted == reference
    assert replayed == reference
