"""Log lines docs/operations.md quotes that no test read (stop 57, audit F), each compared with
the doc's own quote: a stored task refused at start, a round resumed while it was aggregating,
and an unloaded task loaded again. In process, on a Coordinator over a Store."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from pathlib import Path

import pytest

from coordinator.service.rounds import RELOAD_RETRY_S

from .test_h69_store_recovery import _after_commit, _commit, _flaky, _read
from .test_restart_midround import Clock, _frame, _open_round, _start
from .test_service_support import rewrite_stored_config, task_config

PROSE = " ".join(
    (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text().split()
)


def _quoted(prefix: str) -> str:
    """The doc's inline quote that starts with `prefix`."""
    found = re.search(rf"`({re.escape(prefix)}[^`]*)`", PROSE)
    assert found is not None, f"the doc no longer quotes {prefix!r}"
    return found.group(1)


def _said(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "plume.coordinator" and r.levelno == level
    ]


def test_a_refused_stored_task_is_one_error_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "logs it once, at error level: `task N in the store is refused and will not run (...):
    # <reason>`"
    quote = _quoted("task N in the store is refused")
    head, tail = quote.split("(...)")
    assert tail == ": <reason>"
    # Prepare: a task whose stored aggregator spec this version no longer accepts
    db = tmp_path / "plume.db"
    coord = _start(db, Clock())
    task_id, _ = _open_round(coord, task_config(rounds=2))
    coord.store.close()
    rewrite_stored_config(db, task_id, aggregator="no-such-aggregator")
    # Execute
    caplog.set_level(logging.ERROR, logger="plume.coordinator")
    again = _start(db, Clock())
    # Assert: one ERROR line, in the quoted form
    errors = _said(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    line = errors[0]
    assert line.startswith(head.replace("task N", f"task {task_id}") + "("), line
    reason = again.refused[task_id].reason
    assert line.endswith(f"): {reason}"), line
    again.store.close()


def test_a_round_resumed_while_aggregating_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "`task 1 round 4 resumed from the store with 7 accepted updates` for each round a stop or
    # crash left open (with `(it was aggregating)` when it had closed but not published)"
    quote = _quoted("task 1 round 4 resumed from the store with")
    assert "`(it was aggregating)` when it had closed but not published" in PROSE
    # Prepare: a round with two accepted updates, left `aggregating` by a stop
    db = tmp_path / "plume.db"
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    coord = _start(db, Clock())
    task_id, round_id = _open_round(coord, cfg)
    coord.submit(round_id, "a", "k-a", _frame(cfg, 0))
    coord.submit(round_id, "b", "k-b", _frame(cfg, 1))
    coord.store.close()
    con = sqlite3.connect(db)
    con.execute("UPDATE rounds SET state='aggregating' WHERE round_id=?", (round_id,))
    con.commit()
    con.close()
    # Execute
    caplog.set_level(logging.INFO, logger="plume.coordinator")
    again = _start(db, Clock())
    # Assert
    resumed = [m for m in _said(caplog, logging.INFO) if "resumed from the store" in m]
    expected = re.sub(r"\d+ accepted", "2 accepted", quote)
    expected = expected.replace("task 1 round 4", f"task {task_id} round {round_id}")
    assert resumed == [f"{expected} (it was aggregating)"], resumed
    again.store.close()


def test_an_unloaded_task_loaded_again_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "The log says `task N is not running: the store failed while it was loaded (...)`, then
    # `task N: loaded again from the store`"
    first = _quoted("task N is not running: the store failed while it was loaded")
    second = _quoted("task N: loaded again from the store")
    clock = Clock()
    coord = _start(tmp_path / "plume.db", clock)
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    task_id, round_id = _open_round(coord, cfg)
    flaky = _flaky(coord)
    flaky.fail(_commit, 1)
    flaky.fail(_after_commit(flaky, _read), 1)
    caplog.set_level(logging.INFO, logger="plume.coordinator")
    with pytest.raises(sqlite3.OperationalError):
        coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    clock.now += RELOAD_RETRY_S
    coord.tick()
    errors = _said(caplog, logging.ERROR)
    head = first.split("(...)")[0].replace("task N", f"task {task_id}")
    assert [m for m in errors if m.startswith(head)], errors
    infos = _said(caplog, logging.INFO)
    assert second.replace("task N", f"task {task_id}") in infos, infos


def test_a_refused_abandonment_is_the_quoted_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "The log says `round N: the store refused its abandonment too: ...; task M is rebuilt
    # from the store in 5 s, which closes the round`" (the doc said `too (...);` before)
    quote = _quoted("round N: the store refused its abandonment too")
    head, tail = quote.split("...")
    clock = Clock()
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    coord = _start(tmp_path / "plume.db", clock)
    task_id, round_id = _open_round(coord, cfg)
    coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    _, to_close = coord.submit(round_id, "b", "key-b", _frame(cfg, 1))
    assert to_close is not None

    def full(*args: object, **kw: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    coord.store.publish = full  # type: ignore[method-assign]
    coord.store.abandon = full  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="plume.coordinator")
    asyncio.run(coord.close_round(to_close))
    said = [
        m
        for m in (r.getMessage() for r in caplog.records if r.name == "plume.coordinator")
        if "refused its abandonment" in m
    ]
    assert len(said) == 1, said
    assert said[0].startswith(head.replace("round N", f"round {round_id}")), said
    assert said[0].endswith(tail.replace("task M", f"task {task_id}")), said
    coord.store.close()
