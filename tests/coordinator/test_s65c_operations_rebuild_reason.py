"""docs/operations.md names the reason a secure round's record stores, and the line the log
says, when a runtime rebuild from the store abandons the round, as the code writes them, beside
those of a start (s65c).

Before, its persistence section said only that a start marks such a round `abandoned`
("measurements say why"), and its log section named a round "abandoned on start" alone: the
rebuild's own reason, "the task was rebuilt from the store during the secure round ...", and
its WARNING line were named nowhere. Each text is read from a run here, not copied.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from coordinator.service import rounds as rounds_module
from coordinator.service.rounds import RELOAD_RETRY_S

from ._secure_inproc import secure_coordinator
from .test_restart_midround import Clock, _start

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _flat(text: str) -> str:
    """The doc's text with its line breaks as spaces."""
    return re.sub(r"\s+", " ", text)


def _refused(*args: Any, **kwargs: Any) -> Any:
    raise sqlite3.OperationalError("database or disk is full")


def _abandoned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> tuple[str, list[str], int, int]:
    """A secure round open with no stage done, abandoned by a runtime rebuild (`how`
    "rebuild": its close at the deadline stalls, the store refusing its abandonment, and the
    tick RELOAD_RETRY_S later rebuilds the task) or by a start on the same database ("start"):
    (the stored reason, the WARNING lines, the task id, the round id)."""
    clock = Clock()
    coord, task_id = secure_coordinator(tmp_path, clients=3, min_reports=3, clock=clock)
    for device in ("a1", "b2", "c3"):
        coord.check_in(device * 16, task_id)
    rt = coord.runtimes[task_id]
    assert rt.current is not None
    round_id = rt.current.round_id
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        if how == "rebuild":
            clock.now += 601.0
            real_abandon = coord.store.abandon
            coord.store.abandon = _refused  # type: ignore[method-assign]
            assert asyncio.run(coord.close_round(rt)) is None
            coord.store.abandon = real_abandon  # type: ignore[method-assign]
            clock.now += RELOAD_RETRY_S
            coord.tick()
        else:
            coord.store.close()
            coord = _start(tmp_path / "p.db", clock)  # secure_coordinator's database
    stored = coord.store.round(round_id)
    assert stored is not None and stored.state == "abandoned"
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and f"round {round_id} abandoned" in r.getMessage()
    ]
    coord.store.close()
    return str(stored.measurements["abandoned"]), warnings, task_id, round_id


@pytest.mark.parametrize("how", ["rebuild", "start"])
def test_operations_md_names_the_stored_reason_and_the_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Fails before the doc change for "rebuild" (neither text was in it; "start"'s reason
    was only in secure-aggregation.md)."""
    # Execute
    reason, warnings, task_id, round_id = _abandoned(tmp_path, caplog, how)
    # Assert: the run's texts, then the doc's
    assert len(warnings) == 1, warnings
    where = "by its rebuild from the store" if how == "rebuild" else "on start"
    assert warnings[0] == f"task {task_id} round {round_id} abandoned {where} ({reason})"
    doc = _flat(DOC.read_text(encoding="utf-8"))
    assert f'"abandoned": "{reason}"' in doc, reason
    line = f"WARNING: task N round M abandoned {where} ({reason})"
    assert line in doc, line
