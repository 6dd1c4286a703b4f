"""A stopped task's open plain round let go of its decoded updates only at a restart: the stop
abandoned the round in the store but never closed it in the engine, so every accepted update
stayed in memory (helper-88's review). `Engine.abandon_round` closes it without aggregating."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.engine import UnknownRound
from tests.coordinator.test_h79_stop import _plain_world


def test_a_stop_lets_the_open_rounds_updates_go(tmp_path: Path) -> None:
    # Prepare: a plain task with an open round holding two accepted updates
    coord, _, task_id, _, _ = _plain_world(tmp_path / "p.db")
    rt = coord.runtimes[task_id]
    cur = rt.current
    assert cur is not None and rt.engine.reports(cur.engine_round) == 2
    # Execute
    coord.stop_task(task_id)
    # Assert: closed in the engine, nothing held (a closed round reports no updates)
    assert rt.engine.reports(cur.engine_round) == 0
    assert rt.engine._round(cur.engine_round).closed


def test_abandon_round_refuses_an_unknown_round(tmp_path: Path) -> None:
    coord, _, task_id, _, _ = _plain_world(tmp_path / "p.db")
    with pytest.raises(UnknownRound):
        coord.runtimes[task_id].engine.abandon_round(10_000)
