"""The log line of a close whose freeze the store refuses (rounds.py `close_round` on
`begin_close`'s `RoundStateError`) says what became of the task when the close's runtime is no
longer the task's (s65c).

Before, it ended "its runtime was rebuilt" whenever memory held another runtime or none: also
when the task had been unloaded meanwhile (a store error at its rebuild; it runs again once
its retry is due) or refused (its stored rows no longer load), when nothing was rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from coordinator.service import rounds as rounds_module

from .test_restart_midround import Clock
from .test_s61_fail_close_committed import ready_to_close


def _close_line(coord: Any, to_close: Any, caplog: pytest.LogCaptureFixture, task_id: int) -> str:
    """Run the close of `to_close` (its round abandoned in the store behind its back) and
    return its one ERROR line."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        assert asyncio.run(coord.close_round(to_close)) is None
    said = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and "cannot close its round" in r.getMessage()
    ]
    assert len(said) == 1, said
    assert said[0].startswith(f"task {task_id}: cannot close its round (round "), said
    return said[0]


@pytest.mark.parametrize("fault", ["store", "rows"])
def test_the_close_of_a_runtime_whose_task_left_memory_says_so(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    """Fails before the fix: the line ended "its runtime was rebuilt"."""
    # Prepare: the close is due; the task's rebuild then fails (a store error unloads it,
    # any other error refuses it), and the round is abandoned in the store
    clock = Clock()
    coord, task_id, round_id, to_close = ready_to_close(tmp_path / "plume.db", clock)
    exc = sqlite3.OperationalError("disk I/O error") if fault == "store" else ValueError("bad")

    def failing_build(*args: Any, **kwargs: Any) -> Any:
        raise exc

    with monkeypatch.context() as m:
        m.setattr(coord, "_build", failing_build)
        assert not coord._reload(task_id)
    assert task_id not in coord.runtimes
    assert (task_id in coord.unloaded, task_id in coord.refused) == (
        fault == "store",
        fault == "rows",
    )
    assert coord.store.abandon(round_id, task_id, {"abandoned": "by hand"}, "active", clock())
    # Execute
    line = _close_line(coord, to_close, caplog, task_id)
    # Assert: it names what happened, and the close rebuilt nothing
    if fault == "store":
        assert line.endswith(
            "; the task was unloaded meanwhile (the store failed while it was rebuilt); it is "
            "rebuilt from the store when its retry is due"
        ), line
    else:
        assert line.endswith(
            "; the task was refused meanwhile (its stored rows no longer load); it does not "
            "run until the next start"
        ), line
    assert "its runtime was rebuilt" not in line
    assert task_id not in coord.runtimes
    coord.store.close()


def test_the_close_of_a_replaced_runtime_says_it_was_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Passes before the fix too (the wording aside): a successor built meanwhile is named
    as such and left alone."""
    # Prepare
    clock = Clock()
    coord, task_id, round_id, to_close = ready_to_close(tmp_path / "plume.db", clock)
    assert coord._reload(task_id)
    successor = coord.runtimes[task_id]
    assert coord.store.abandon(round_id, task_id, {"abandoned": "by hand"}, "active", clock())
    # Execute
    line = _close_line(coord, to_close, caplog, task_id)
    # Assert
    assert line.endswith(
        "; its runtime was rebuilt from the store meanwhile; that one is left as it is"
    ), line
    assert coord.runtimes[task_id] is successor
    coord.store.close()
