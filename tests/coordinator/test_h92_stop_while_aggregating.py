"""A stop that lands while its task's round aggregates in a worker thread publishes nothing
after the stop has answered (docs/http-api.md "Exporting and stopping a task").

Before, `close_blocking` read the stop only before it aggregated: a stop answered while the
aggregation ran let the close publish one more version (the store's and, once the close
finished, the served one) after the stop's 200. Now the close decides under the same lock as
the stop: a stop first discards the aggregate and abandons the round ("stopped by the
operator", its accepted updates kept); a close whose publish committed first is finished by the
stop, whose answer then shows that version, and nothing changes after it. The interleavings are
forced with hooks that block the worker thread until the stop has answered."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator.engine import RoundOutcome
from coordinator.service.errors import ApiError
from coordinator.service.rounds import STOP_REASON, Coordinator, TaskRuntime
from protocol.messages import TaskStatus
from protocol.names import RoundState, TaskState

from ._secure_inproc import STAGES, join_round, secure_coordinator, stage_body
from .test_h79_stop import _frame, _plain_world

WAIT_S = 5.0


def _blocked_close(
    coord: Coordinator, rt: TaskRuntime, entered: threading.Event, release: threading.Event
) -> tuple[TaskStatus, RoundOutcome | None, TaskStatus]:
    """Run the round's close on an event loop; once the worker thread is `entered` (and
    blocked until `release`), stop the task; return (the stop's answer, the close's outcome,
    the status after the close)."""

    async def run() -> tuple[TaskStatus, RoundOutcome | None, TaskStatus]:
        closing = asyncio.create_task(coord.close_round(rt))
        assert await asyncio.to_thread(entered.wait, WAIT_S), "the close never began"
        answered = coord.stop_task(rt.task_id)
        release.set()
        outcome = await closing
        return answered, outcome, coord.task_status(rt.task_id)

    return asyncio.run(run())


def _full_round(tmp_path: Path) -> tuple[Coordinator, TaskRuntime, int, str]:
    """The h79 world with its open round's third report in: (coordinator, runtime, round,
    digest of version 1); the round is due to close."""
    coord, cfg, task_id, open_round, digest = _plain_world(tmp_path / "p.db")
    _, to_close = coord.submit(open_round, "c", "k2c", _frame(cfg, 12))
    rt = coord.runtimes[task_id]
    assert to_close is rt
    return coord, rt, open_round, digest


def _hold(
    entered: threading.Event, release: threading.Event, call: Callable[..., Any]
) -> Callable[..., Any]:
    def held(*args: Any) -> Any:
        entered.set()
        assert release.wait(WAIT_S), "the stop never answered"
        return call(*args)

    return held


def test_a_stop_during_aggregation_discards_the_aggregate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the aggregation blocks until the stop has answered
    coord, rt, open_round, digest = _full_round(tmp_path)
    entered, release = threading.Event(), threading.Event()
    monkeypatch.setattr(rt.engine, "close_round", _hold(entered, release, rt.engine.close_round))
    # Execute
    answered, outcome, after = _blocked_close(coord, rt, entered, release)
    # Assert: the stop answered version 1, and version 1 it stays, in memory and in the store
    assert answered.state == TaskState.STOPPED
    assert (answered.version, answered.model_digest) == (1, digest)
    assert (after.version, after.model_digest, after.state) == (1, digest, TaskState.STOPPED)
    assert outcome is not None and not outcome.committed
    stored = coord.store.task(rt.task_id)
    assert stored is not None and (stored.version, stored.digest) == (1, digest)
    # ... the round is abandoned as stopped, with its three accepted updates kept
    row = coord.store.round(open_round)
    assert row is not None and row.state == RoundState.ABANDONED
    assert row.measurements["abandoned"] == STOP_REASON
    assert sorted(u.device_id for u in coord.store.updates(open_round)) == ["a", "b", "c"]
    assert coord.upload_outcome(open_round, "c") == "abandoned"
    assert (after.rounds_closed, after.rounds_committed, after.current_round) == (2, 1, None)
    # ... and version 2 was never published
    with pytest.raises(ApiError) as caught:
        coord.export_model(rt.task_id, 2)
    assert caught.value.reason == "unknown_version"


def test_a_stop_after_the_publish_committed_answers_that_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the close has published (its worker thread is done with the store) but the
    # event loop has not yet made the version visible when the stop lands
    coord, rt, open_round, digest = _full_round(tmp_path)
    entered, release = threading.Event(), threading.Event()
    real = coord.close_blocking

    def published_then_held(rt_: TaskRuntime, cur: Any) -> RoundOutcome:
        outcome = real(rt_, cur)
        return _hold(entered, release, lambda: outcome)()  # type: ignore[no-any-return]

    monkeypatch.setattr(coord, "close_blocking", published_then_held)
    # Execute
    answered, outcome, after = _blocked_close(coord, rt, entered, release)
    # Assert: the stop's answer is the final state: version 2, the round closed
    assert outcome is not None and outcome.committed and outcome.version == 2
    assert answered.state == TaskState.STOPPED and answered.version == 2
    assert answered.model_digest != digest
    assert after == answered
    assert (after.rounds_closed, after.rounds_committed, after.current_round) == (2, 2, None)
    stored = coord.store.task(rt.task_id)
    assert stored is not None and (stored.version, stored.digest) == (2, answered.model_digest)
    row = coord.store.round(open_round)
    assert row is not None and row.state == RoundState.COMMITTED


SECURE_DEVICES = [f"{i:032x}" for i in range(3)]


def _secure_round_unmasked(tmp_path: Path) -> tuple[Coordinator, TaskRuntime, int]:
    """A secure task whose first round ran all four stages with three devices (it is due to
    close and would commit): (coordinator, runtime, round)."""
    coord, task_id = secure_coordinator(tmp_path, clients=3, min_reports=3)
    for d in SECURE_DEVICES:
        coord.check_in(d, task_id)
    rt = coord.runtimes[task_id]
    assert rt.current is not None and rt.secure is not None
    rid = rt.current.round_id
    sessions, _ = join_round(coord, rt, rid, SECURE_DEVICES)
    for stage, before in zip(STAGES, (None, *STAGES[:-1]), strict=True):
        for d, s in sessions.items():
            got = coord.secure_download(rid, before, d) if before is not None else None
            coord.secure_upload(rid, stage, d, stage_body(s, stage, got, d))
    assert rt.secure.registry.ready(rid)
    return coord, rt, rid


def test_a_stop_while_a_secure_round_unmasks_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the sums are unmasked, then the worker blocks until the stop has answered
    coord, rt, rid = _secure_round_unmasked(tmp_path)
    before = (rt.version, rt.digest)
    assert rt.secure is not None
    registry = rt.secure.registry
    entered, release = threading.Event(), threading.Event()
    real = registry.finish

    def unmasked_then_held(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        assert result.committed  # it would have published
        return _hold(entered, release, lambda: result)()

    monkeypatch.setattr(registry, "finish", unmasked_then_held)
    # Execute
    answered, outcome, after = _blocked_close(coord, rt, entered, release)
    # Assert: no version after the stop's answer; the round abandoned as stopped
    assert (answered.version, answered.model_digest) == before
    assert (after.version, after.model_digest, after.state) == (*before, TaskState.STOPPED)
    assert outcome is not None and not outcome.committed
    stored = coord.store.task(rt.task_id)
    assert stored is not None and (stored.version, stored.digest) == before
    row = coord.store.round(rid)
    assert row is not None and row.state == RoundState.ABANDONED
    assert row.measurements["abandoned"] == STOP_REASON
    assert not registry.has_round(rid)  # its key material dropped
