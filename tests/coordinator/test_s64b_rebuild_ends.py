"""The rounds and task ends of a task rebuilt from the store (rounds.py `_reload`, `_build`,
`fail_close`, `close_round`'s `RoundStateError` branch): each round this process closes counts
once in `plume_rounds_total`, and a rebuild that finds a task done which memory held active
ends it as a close that finishes it does (`_done_task_ends`: its "task N done" line).

Before: `close_round`'s rebuild after the store refused a round's freeze (the round finished in
the store, the task with it) and an unloaded task's rebuild after its last round's failed close
never logged the task done (`fail_close` did so only when its own rebuild loaded the task); and
a close whose publish committed before it failed, whose abandonment the store then refused, was
never counted in `plume_rounds_total` (the rebuild 5 s later found the round committed and
counted nothing)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service import rounds as rounds_module
from coordinator.service.rounds import RELOAD_RETRY_S, Coordinator, TaskRuntime

from ._secure_inproc import secure_coordinator
from .test_restart_midround import Clock, _frame, _open_round, _start
from .test_s61_fail_close_committed import snapshot_encoding_fails_once
from .test_service_support import SPEC, initial_params, task_config


def _rounds(coord: Coordinator) -> tuple[float, float]:
    """(committed, abandoned) of `plume_rounds_total`."""
    get = coord.metrics.registry.get_sample_value
    committed = get("plume_rounds_total", {"outcome": "committed"}) or 0.0
    return committed, get("plume_rounds_total", {"outcome": "abandoned"}) or 0.0


def _last_round_ready(db: Path, clock: Clock) -> tuple[Coordinator, int, int, TaskRuntime]:
    """A coordinator on `db` whose task (one round of 2 reports) has both reports of its only
    round in: the coordinator, the task id, the round id and the close to run."""
    cfg = task_config(rounds=1, clients_per_round=2, selection_timeout_s=30)
    coord = _start(db, clock)
    task_id, round_id = _open_round(coord, cfg)
    coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    _, to_close = coord.submit(round_id, "b", "key-b", _frame(cfg, 1))
    assert to_close is not None
    return coord, task_id, round_id, to_close


def _done_lines(caplog: pytest.LogCaptureFixture, task_id: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.getMessage().startswith(f"task {task_id} done")
    ]


def _refused(*args: Any, **kwargs: Any) -> Any:
    raise sqlite3.OperationalError("database or disk is full")


# -- the task's end after a rebuild ------------------------------------------------------


@pytest.mark.parametrize("stored", ["abandoned", "committed"])
def test_a_close_the_store_refuses_for_a_last_round_it_holds_finished_ends_the_task(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, stored: str
) -> None:
    # Prepare: the task's only round finished in the store behind the service's back, the
    # task stored done with it; memory holds the round open and the task active
    clock = Clock()
    coord, task_id, round_id, to_close = _last_round_ready(tmp_path / "plume.db", clock)
    if stored == "abandoned":
        assert coord.store.abandon(round_id, task_id, {"abandoned": "by hand"}, "done", clock())
    else:
        params, _ = coord.store.task_model(task_id)
        residual = to_close.strategy.feedback.to_bytes()  # a valid one: a rebuild decodes it
        row = coord.store.task(task_id)
        assert row is not None
        coord.store.set_round_state(round_id, "aggregating")
        coord.store.publish(
            task_id=task_id, round_id=round_id, version=1, delta_frame=b"delta-1",
            digest=row.digest, params=params, residual=residual,
            measurements={"clients": 2}, task_state="done", now=clock(),
        )  # fmt: skip
    # Execute: the close (its freeze refused: `RoundStateError`), then ticks
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        assert asyncio.run(coord.close_round(to_close)) is None
        assert [coord.tick() for _ in range(2)] == [[], []]
    # Assert: the rebuilt task is done, and says so once, as a close that ends it does
    rt = coord.runtimes[task_id]
    assert rt is not to_close and rt.state == "done" and rt.current is None
    said = _done_lines(caplog, task_id)
    version = 1 if stored == "committed" else 0
    assert said == [
        f"task {task_id} done: 1 of its 1 rounds closed, {version} committed; "
        f"model version {version} is final"
    ], said
    # This process closed no round: the store did (`plume_rounds_total` counts this process's)
    assert _rounds(coord) == (0.0, 0.0)
    coord.store.close()


@pytest.mark.parametrize("rebuilds_failed", [1, 2])
def test_a_last_round_whose_close_failed_ends_the_task_when_its_unloaded_task_loads_again(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    rebuilds_failed: int,
) -> None:
    # Prepare: the close of the task's only round fails (its publish), the store records the
    # round abandoned and the task done, then fails the rebuild that follows (a lock), and
    # with 2 the retry 5 s later too
    clock = Clock()
    coord, task_id, round_id, to_close = _last_round_ready(tmp_path / "plume.db", clock)
    monkeypatch.setattr(coord, "_publish", lambda *a, **k: _refused())
    real_task_model = coord.store.task_model
    failures = [sqlite3.OperationalError("database is locked")] * rebuilds_failed

    def task_model_fails(task_id: int) -> tuple[bytes, bytes | None]:
        if failures:
            raise failures.pop()
        return real_task_model(task_id)

    monkeypatch.setattr(coord.store, "task_model", task_model_fails)
    # Execute: the close (its rebuild unloads the task), then ticks as the retries are due
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        assert asyncio.run(coord.close_round(to_close)) is None
        unloaded = task_id in coord.unloaded and task_id not in coord.runtimes
        for _ in range(rebuilds_failed - 1):
            clock.now += RELOAD_RETRY_S
            assert coord.tick() == []
        unloaded = unloaded and task_id in coord.unloaded
        said_unloaded = _done_lines(caplog, task_id)
        clock.now += RELOAD_RETRY_S
        assert coord.tick() == []
    # Assert: loaded again, done, and said so once, at the load
    assert unloaded and said_unloaded == [] and not failures
    assert task_id not in coord.unloaded and coord.runtimes[task_id].state == "done"
    assert coord.round_status(round_id).state == "abandoned"
    said = _done_lines(caplog, task_id)
    assert said == [
        f"task {task_id} done: 1 of its 1 rounds closed, 0 committed; model version 0 is final"
    ], said
    assert _rounds(coord) == (0.0, 1.0)
    coord.store.close()


def test_a_last_round_whose_close_failed_ends_the_task_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the close of the task's only round fails (its publish); the store works
    clock = Clock()
    coord, task_id, round_id, to_close = _last_round_ready(tmp_path / "plume.db", clock)
    monkeypatch.setattr(coord, "_publish", lambda *a, **k: _refused())
    # Execute
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        assert asyncio.run(coord.close_round(to_close)) is None
        clock.now += RELOAD_RETRY_S
        assert coord.tick() == []
    # Assert: rebuilt done, one "done" line (the rebuild's, not also `fail_close`'s)
    assert coord.runtimes[task_id].state == "done"
    assert len(_done_lines(caplog, task_id)) == 1, _done_lines(caplog, task_id)
    assert _rounds(coord) == (0.0, 1.0)
    coord.store.close()


# -- the rounds counter ------------------------------------------------------------------


def test_a_close_that_published_then_failed_is_counted_though_the_store_refuses_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the close of the task's only round publishes, then encoding the new version's
    # snapshot fails; the store refuses the abandonment `fail_close` used to try then
    clock = Clock()
    coord, task_id, round_id, to_close = _last_round_ready(tmp_path / "plume.db", clock)
    encodings = snapshot_encoding_fails_once(monkeypatch)
    monkeypatch.setattr(coord.store, "abandon", _refused)
    # Execute: the close, then ticks past the rebuild's retry
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        assert asyncio.run(coord.close_round(to_close)) is None
        for _ in range(2):
            clock.now += RELOAD_RETRY_S
            assert coord.tick() == []
    # Assert: the round is the committed one the store holds, counted once as such, logged
    # as committed; the rebuilt task serves its version, done, said once
    assert not encodings
    assert coord.round_status(round_id).state == "committed"
    assert _rounds(coord) == (1.0, 0.0)
    said = [r.getMessage() for r in caplog.records if f"round {round_id} " in r.getMessage()]
    assert any("committed, then its close failed: MemoryError" in m for m in said), said
    rt = coord.runtimes[task_id]
    assert rt is not to_close and (rt.version, rt.state, rt.current) == (1, "done", None)
    assert len(_done_lines(caplog, task_id)) == 1, _done_lines(caplog, task_id)
    coord.store.close()


def test_a_close_that_failed_after_a_stop_finished_it_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the close of the task's only round publishes; encoding the new version's
    # snapshot (in the worker thread) waits until the test has stopped the task, then fails
    clock = Clock()
    coord, task_id, round_id, to_close = _last_round_ready(tmp_path / "plume.db", clock)
    real = rounds_module.encode_snapshot
    reached, go_on = threading.Event(), threading.Event()
    calls: list[str] = []

    def failing_after_the_stop(*args: Any, **kwargs: Any) -> bytes:
        if not calls:
            calls.append("close")
            reached.set()
            assert go_on.wait(10), "the test never let the close go on"
            raise MemoryError("no memory for the snapshot")
        return real(*args, **kwargs)

    monkeypatch.setattr(rounds_module, "encode_snapshot", failing_after_the_stop)

    async def close_with_a_stop() -> None:
        closing = asyncio.create_task(coord.close_round(to_close))
        assert await asyncio.to_thread(reached.wait, 10)
        # The stop, on the event loop while the close's publish is stored: it finishes the
        # close from what it stored (the task done by its last round: not stopped)
        assert coord.stop_task(task_id).state == "done"
        go_on.set()
        assert await closing is None

    # Execute
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        asyncio.run(close_with_a_stop())
    # Assert: the round counted once, committed; the task ended once
    assert coord.round_status(round_id).state == "committed"
    assert _rounds(coord) == (1.0, 0.0)
    assert len(_done_lines(caplog, task_id)) == 1, _done_lines(caplog, task_id)
    rt = coord.runtimes[task_id]
    assert (rt.version, rt.state, rt.current) == (1, "done", None)
    coord.store.close()


def test_a_close_that_failed_on_a_round_the_store_holds_finished_is_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: while the close of the task's only round aggregates, the round is abandoned in
    # the store behind the service's back (the task stored done with it): its publish is
    # refused (`RoundStateError`) and the close fails
    clock = Clock()
    coord, task_id, round_id, to_close = _last_round_ready(tmp_path / "plume.db", clock)
    real = to_close.engine.close_round

    def abandoned_by_hand_first(engine_round: int) -> Any:
        assert coord.store.abandon(round_id, task_id, {"abandoned": "by hand"}, "done", clock())
        return real(engine_round)

    monkeypatch.setattr(to_close.engine, "close_round", abandoned_by_hand_first)
    # Execute
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        assert asyncio.run(coord.close_round(to_close)) is None
        assert coord.tick() == []
    # Assert: the store's record stands; this process closed no round, and does not say it
    # committed one; the rebuilt task is done, said once
    stored = coord.store.round(round_id)
    assert stored is not None and stored.measurements == {"abandoned": "by hand"}
    assert _rounds(coord) == (0.0, 0.0)
    said = [r.getMessage() for r in caplog.records if f"round {round_id}" in r.getMessage()]
    assert not any("committed" in m for m in said), said
    assert any("the store holds the round finished already" in m for m in said), said
    rt = coord.runtimes[task_id]
    assert rt is not to_close and (rt.version, rt.state, rt.current) == (0, "done", None)
    assert len(_done_lines(caplog, task_id)) == 1, _done_lines(caplog, task_id)
    coord.store.close()


def test_a_close_that_failed_right_after_its_publish_committed_counts_it_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the publish of the task's only round commits, then keeping the published copy
    # in memory fails (before the close records its outcome in `ActiveRound.stored`)
    clock = Clock()
    coord, task_id, round_id, to_close = _last_round_ready(tmp_path / "plume.db", clock)

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError("no memory for the published copy")

    monkeypatch.setattr(rounds_module, "PublishedModel", no_memory)
    # Execute
    assert asyncio.run(coord.close_round(to_close)) is None
    # Assert: the store's committed round, counted as such (the store answered what it holds)
    assert to_close.current is not None and to_close.current.stored is None
    assert coord.round_status(round_id).state == "committed"
    assert _rounds(coord) == (1.0, 0.0)
    rt = coord.runtimes[task_id]
    assert (rt.version, rt.state) == (1, "done")
    coord.store.close()


# -- what docs/operations.md says plume_rounds_total counts (pins: these passed before) ----


def test_a_round_a_start_finds_aggregating_counts_in_the_new_process(tmp_path: Path) -> None:
    # Prepare: a full round left aggregating by a coordinator killed mid-close
    clock = Clock()
    db = tmp_path / "plume.db"
    first, _, round_id, _ = _last_round_ready(db, clock)
    first.store.set_round_state(round_id, "aggregating")
    first.store.close()
    # Execute: a start, then the close it hands back (what `serve` runs at once)
    coord = _start(db, clock)
    due = coord.pending_closes()
    at_start = _rounds(coord)
    for rt in due:
        asyncio.run(coord.close_round(rt))
    # Assert: re-aggregated and published by this process: counted by it
    assert at_start == (0.0, 0.0) and len(due) == 1
    assert coord.round_status(round_id).state == "committed"
    assert _rounds(coord) == (1.0, 0.0)
    coord.store.close()


def test_a_secure_round_a_start_abandons_counts_in_the_new_process(tmp_path: Path) -> None:
    # Prepare: a secure round opened (three devices checked in), then the coordinator gone
    first, task_id = secure_coordinator(tmp_path, 3, 3)
    for device in ("a1", "b2", "c3"):
        first.check_in(device * 16, task_id)
    cur = first.runtimes[task_id].current
    assert cur is not None
    first.store.close()
    # Execute: a start on the same store
    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), clock=lambda: 1000.0)
    coord.restore()
    # Assert: the start abandoned it (its key material was in memory): counted by this process
    assert coord.round_status(cur.round_id).state == "abandoned"
    assert _rounds(coord) == (0.0, 1.0)
    coord.store.close()


def test_a_round_a_runtime_rebuild_closes_counts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the close's publish and the abandonment after it both refused (a full disk)
    clock = Clock()
    coord, _, round_id, to_close = _last_round_ready(tmp_path / "plume.db", clock)
    with monkeypatch.context() as full:
        full.setattr(coord.store, "publish", _refused)
        full.setattr(coord.store, "abandon", _refused)
        assert asyncio.run(coord.close_round(to_close)) is None
    stalled = coord.round_status(round_id).state
    # Execute: the tick that rebuilds the task once its retry is due, and the close it hands back
    clock.now += RELOAD_RETRY_S
    for rt in coord.tick():
        asyncio.run(coord.close_round(rt))
    # Assert: not counted while it stalled; counted once when the rebuild's close published it
    assert stalled == "aggregating"
    assert coord.round_status(round_id).state == "committed"
    assert _rounds(coord) == (1.0, 0.0)
    coord.store.close()


# -- what a runtime rebuild records of the secure round it abandons ----------------------


def test_a_secure_round_a_runtime_rebuild_abandons_is_not_said_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a secure round open with no stage done; its close at the deadline aborts, and
    # the store refuses the abandonment twice (the close's, then `fail_close`'s)
    clock = Clock()
    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), clock=clock)
    coord.restore()
    cfg = task_config(
        clients_per_round=3, min_reports=3, deadline_s=600.0, rounds=1,
        secure={"coord_fraction": 0.2, "stage_timeout_s": 300.0},
    )  # fmt: skip
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    for device in ("a1", "b2", "c3"):
        coord.check_in(device * 16, task_id)
    rt = coord.runtimes[task_id]
    assert rt.current is not None
    round_id = rt.current.round_id
    clock.now += 601.0
    real_abandon = coord.store.abandon
    coord.store.abandon = _refused  # type: ignore[method-assign]
    assert asyncio.run(coord.close_round(rt)) is None
    coord.store.abandon = real_abandon  # type: ignore[method-assign]
    stalled = coord.round_status(round_id).state
    # Execute: the tick that rebuilds the task once its retry is due
    clock.now += RELOAD_RETRY_S
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        assert coord.tick() == []
    # Assert: abandoned by the rebuild, which says so; not "restarted" (no start happened)
    assert stalled == "aggregating"
    stored = coord.store.round(round_id)
    assert stored is not None and stored.state == "abandoned"
    reason = stored.measurements["abandoned"]
    assert "restarted" not in reason and "rebuilt from the store" in reason, reason
    said = [r.getMessage() for r in caplog.records if f"round {round_id} " in r.getMessage()]
    assert said and not any("on start" in m for m in said), said
    assert _rounds(coord) == (0.0, 1.0)
    # its only round: the rebuild ended the task, once (`_abandon_on_start`, not again)
    assert coord.runtimes[task_id].state == "done"
    assert len(_done_lines(caplog, task_id)) == 1, _done_lines(caplog, task_id)
    coord.store.close()


# -- the dp gauges of a round whose close failed -------------------------------------------

# z=2 over population=2, sample=2 (test_h62_dp_stop_restart): round 1 reaches epsilon 4.73,
# round 2 7.08; the budget leaves room for both.
DP = "dp:z=2,clip=1,population=2,sample=2,eps=50+fedavg"


def _dp_gauges(coord: Coordinator, task_id: int) -> tuple[float | None, float | None]:
    """(plume_dp_epsilon, plume_dp_rounds) the task's series serve."""
    get = coord.metrics.registry.get_sample_value
    labels = {"task": str(task_id)}
    return get("plume_dp_epsilon", labels), get("plume_dp_rounds", labels)


@pytest.mark.parametrize("abandonment", ["stored", "refused"])
def test_a_dp_round_whose_publish_failed_leaves_the_gauges_at_the_last_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abandonment: str
) -> None:
    # Prepare: a dp task's round 1 committed; round 2's reports in
    clock = Clock()
    coord = _start(tmp_path / "plume.db", clock)
    cfg = task_config(rounds=5, clients_per_round=2, aggregator=DP)
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    a, b = "a" * 32, "b" * 32
    for n in (1, 2):
        coord.check_in(a, task_id)
        answer = coord.check_in(b, task_id)
        assert answer.assignment is not None
        round_id = answer.assignment.round_id
        coord.submit(round_id, a, f"ka{n}", _frame(cfg, 2 * n))
        _, to_close = coord.submit(round_id, b, f"kb{n}", _frame(cfg, 2 * n + 1))
        assert to_close is not None
        if n == 1:
            assert asyncio.run(coord.close_round(to_close)) is not None
            released = _dp_gauges(coord, task_id)
    # Execute: round 2's publish fails; its abandonment is stored and the rebuild after it
    # fails on a store error (the task unloaded, its last series still served), or the
    # store refuses the abandonment too (the round left aggregating until a rebuild)
    with monkeypatch.context() as failing:
        failing.setattr(coord.store, "publish", _refused)
        if abandonment == "refused":
            failing.setattr(coord.store, "abandon", _refused)
        else:
            failing.setattr(coord.store, "task_model", _refused)
        assert asyncio.run(coord.close_round(to_close)) is None
    # Assert: the gauges read round 1's release, not the noised sum nobody got
    assert released[0] is not None and 4.7 < released[0] < 4.8 and released[1] == 1.0
    assert _dp_gauges(coord, task_id) == released
    assert coord.round_status(round_id).state == (
        "aggregating" if abandonment == "refused" else "abandoned"
    )
    assert (task_id in coord.unloaded) == (abandonment == "stored")
    coord.store.close()
