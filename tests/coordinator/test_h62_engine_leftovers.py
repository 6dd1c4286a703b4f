"""The round engine and the service when a step fails half-way: a round the store refused to
open leaves no trace in the engine (same next round number and seeded cohort, no orphan), and
a close whose aggregation raises lets go of that round's updates. Closed rounds keep no
selection."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compression import CodecConfig, ModelSpec, UpdateCodec
from coordinator.aggregators import AggregateOutput, ClientUpdate, FedAvg
from coordinator.engine import (
    EngineConfig,
    EngineError,
    RoundClosed,
    RoundEngine,
    Strategy,
)

from .test_restart_midround import Clock, _start
from .test_service_support import initial_params, task_config

SPEC = ModelSpec.from_shapes([("w", (4, 3))])
DENSE = CodecConfig.dense()
DEVICES = [f"d{i}" for i in range(12)]


def _frame(seed: int) -> bytes:
    values = np.random.default_rng(seed).normal(size=SPEC.size).astype(np.float32)
    frame, _ = UpdateCodec(SPEC, DENSE).encode(values, np.random.default_rng(seed))
    return frame


class FailingAggregate(Strategy):
    def aggregate(
        self, engine: RoundEngine, round_id: int, updates: Sequence[ClientUpdate]
    ) -> AggregateOutput:
        raise ArithmeticError("aggregator failed")


def _engine(strategy: Strategy | None = None) -> RoundEngine:
    cfg = EngineConfig(clients_per_round=3, codec=DENSE, seed=7)
    return RoundEngine(SPEC, np.zeros(SPEC.size, np.float32), FedAvg(), cfg, strategy=strategy)


def test_a_failed_aggregation_closes_the_round_and_lets_go_of_its_updates() -> None:
    # Prepare: a round with two reports whose aggregation raises
    eng = _engine(FailingAggregate())
    plan = eng.open_round(DEVICES)
    for i, dev in enumerate(plan.selected[:2]):
        eng.submit(plan.round_id, dev, _frame(i))
    # Execute
    with pytest.raises(ArithmeticError):
        eng.close_round(plan.round_id)
    # Assert: nothing of the round is held; it stays closed; the model did not move
    assert eng.reports(plan.round_id) == 0
    with pytest.raises(RoundClosed):
        eng.submit(plan.round_id, plan.selected[2], _frame(2))
    with pytest.raises(RoundClosed):
        eng.close_round(plan.round_id)
    assert eng.version == 0 and not eng.params.any()


def test_closed_rounds_keep_no_selection() -> None:
    # Prepare: one committed round, one abandoned, one failed
    eng = _engine()
    committed = eng.open_round(DEVICES)
    for i, dev in enumerate(committed.selected):
        eng.submit(committed.round_id, dev, _frame(i))
    eng.close_round(committed.round_id)
    abandoned = eng.open_round(DEVICES)
    eng.close_round(abandoned.round_id)
    eng.strategy = FailingAggregate()
    failed = eng.open_round(DEVICES)
    eng.submit(failed.round_id, failed.selected[0], _frame(9))
    with pytest.raises(ArithmeticError):
        eng.close_round(failed.round_id)
    # Assert: each closed round is held without its cohort or updates, and still refuses
    for plan in (committed, abandoned, failed):
        held = eng._rounds[plan.round_id]
        assert held.closed and not held.selected and not held.updates and not held.plan.selected
        with pytest.raises(RoundClosed):
            eng.submit(plan.round_id, plan.selected[0], _frame(1))


def test_cancel_open_restores_the_round_number_and_the_seeded_cohort() -> None:
    # Prepare
    reference = _engine().open_round(DEVICES)
    eng = _engine()
    # Execute
    first = eng.open_round(DEVICES)
    eng.cancel_open(first.round_id)
    again = eng.open_round(DEVICES)
    # Assert
    assert (again.round_id, again.selected) == (reference.round_id, reference.selected)
    assert list(eng._rounds) == [again.round_id]


def test_cancel_open_refuses_a_round_with_updates_or_not_the_newest() -> None:
    eng = _engine()
    first = eng.open_round(DEVICES)
    eng.submit(first.round_id, first.selected[0], _frame(0))
    with pytest.raises(EngineError):
        eng.cancel_open(first.round_id)  # it holds an update
    second = eng.open_round(DEVICES)
    eng.close_round(first.round_id)
    with pytest.raises(EngineError):
        eng.cancel_open(first.round_id)  # closed, and not the newest
    eng.cancel_open(second.round_id)
    assert eng.reports(first.round_id) == 0


def _coordinator_with_pool(tmp_path: Path, name: str) -> tuple[Any, int]:
    """A coordinator whose task (seeded, cohort 2) has its model and 5 devices waiting but
    no round yet (its selection timeout is long)."""
    from compression import encode_snapshot

    from .test_restart_midround import SPEC as TASK_SPEC

    coord = _start(tmp_path / name, Clock())
    cfg = task_config(rounds=3, clients_per_round=2, selection_timeout_s=600, seed=11)
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), TASK_SPEC, "fp32"))
    rt = coord.runtimes[task_id]
    now = coord.clock()
    for i in range(5):
        rt.pool[f"{i:032x}"] = now
    return coord, task_id


def test_a_round_the_store_refuses_to_open_leaves_the_engine_as_it_was(tmp_path: Path) -> None:
    # Prepare: the same task twice; on one, the store refuses the first open_round
    reference, ref_task = _coordinator_with_pool(tmp_path, "ref.db")
    coord, task_id = _coordinator_with_pool(tmp_path, "plume.db")
    real = coord.store.open_round

    def full_disk(*args: Any, **kw: Any) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    coord.store.open_round = full_disk  # type: ignore[method-assign]
    rt = coord.runtimes[task_id]
    # Execute: the refused open, then the store works again
    with pytest.raises(sqlite3.OperationalError):
        coord.check_in(f"{9:032x}", task_id)
    orphans = dict(rt.engine._rounds)
    coord.store.open_round = real  # type: ignore[method-assign]
    coord.check_in(f"{9:032x}", task_id)
    reference.check_in(f"{9:032x}", ref_task)
    # Assert: no orphan round; the round that opened is the one an unfailed start opens
    assert orphans == {} and rt.current is not None
    ref_rt = reference.runtimes[ref_task]
    assert ref_rt.current is not None
    assert (rt.current.engine_round, rt.current.selected) == (
        ref_rt.current.engine_round,
        ref_rt.current.selected,
    )
    assert list(rt.engine._rounds) == [rt.current.engine_round]


def test_the_service_engines_keep_no_in_memory_ledger(tmp_path: Path) -> None:
    # The service's ledger is in SQLite; its engines' in-memory ledger gained a row per accepted
    # upload, read by nothing, for the life of the process.
    from .test_restart_midround import _frame as task_frame
    from .test_restart_midround import _open_round

    # Prepare
    cfg = task_config(rounds=1, clients_per_round=2, selection_timeout_s=30)
    coord = _start(tmp_path / "plume.db", Clock())
    task_id, round_id = _open_round(coord, cfg)
    # Execute
    coord.submit(round_id, "a", "key-a", task_frame(cfg, 0))
    coord.submit(round_id, "b", "key-b", task_frame(cfg, 1))
    # Assert: accepted and stored (and in the SQLite ledger's place), nothing held in memory
    assert coord.store.count_updates(round_id) == 2
    assert coord.runtimes[task_id].engine.ledger.rows() == []
