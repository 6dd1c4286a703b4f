"""A resume that lands while a paused task's last round closes: the task is `done` in memory,
in the store and after a restart. Before, the close read `paused`, so its commit did not
finish the task in the store, and the resume stored `active`: memory said `done`, the store
`active`, and after a restart the task read `active` with no round left to run, its devices
told to wait for good (a reviewer's race over HTTP: 14 of 14 tries with a 4M-parameter
model)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from coordinator.service.rounds import Coordinator

from .test_h57_pause_during_close import Clock, _start, paused_last_round


def _around_publish(coord: Coordinator, action: Any, after: bool) -> None:
    """Run `action` once inside the close: before its commit (`Store.publish`), after it read
    the task's state, or right after the commit (before the event loop's `finish_close`)."""
    real = coord.store.publish

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if not after:
            action()
        result = real(*args, **kwargs)
        if after:
            action()
        return result

    coord.store.publish = hooked  # type: ignore[method-assign]


@pytest.mark.parametrize("after", [False, True], ids=["before-commit", "after-commit"])
def test_a_resume_during_the_last_close_is_done_everywhere(tmp_path: Path, after: bool) -> None:
    # Prepare: a one-round task paused while its round runs; the round then commits
    clock = Clock()
    coord, task_id = paused_last_round(tmp_path / "p.db", clock)
    _around_publish(coord, lambda: coord.set_paused(task_id, False), after)
    # Execute
    asyncio.run(coord.close_round(coord.runtimes[task_id]))
    # Assert: done in memory and in the store, and after a restart; a check-in hears `end`
    assert coord.task_status(task_id).state == "done"
    assert coord.store.task(task_id).state == "done"  # type: ignore[union-attr]
    coord.store.close()
    again = _start(tmp_path / "p.db", clock)
    assert again.task_status(task_id).state == "done"
    assert again.check_in("a", task_id).action == "end"
    again.store.close()
