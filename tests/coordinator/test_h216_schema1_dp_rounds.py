"""A database from store schema 1 (no `tasks.agg_state`) with a central-DP task that released
rounds: the accountant resumes at the rounds the task's records show released, not at 0.
Before, the build skipped the restore when no state was stored, so the next round was accounted
as the first (its epsilon, the budget check, and the all-tasks figure under-counted from then
on), and an adaptive clip restarted at its configured start."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from coordinator.aggregators import decode_state
from coordinator.privacy import FixedSizeSampling, PrivacyAccountant
from coordinator.service.dp_total import all_tasks_privacy
from coordinator.service.rounds import Coordinator, dp_rounds_in_state
from protocol.messages import TaskConfig

from .test_h79_stop import DEVICES, _frame, _open_round, _start, _task
from .test_service_support import task_config

DP3 = "dp:clip=1,z=1,population=3,sample=3,delta=1e-5+fedavg"
ADAPTIVE = (
    "adam:lr=0.1+dp:clip=1,z=1,population=3,sample=3,delta=1e-5,quantile=0.5,count_std=1+fedavg"
)


def _eps(rounds: int) -> float:
    return PrivacyAccountant(1.0, FixedSizeSampling(3, 3)).epsilon(rounds, 1e-5)


def _round(coord: Coordinator, cfg: TaskConfig, task_id: int, r: int) -> dict[str, Any]:
    round_id = _open_round(coord, task_id, DEVICES)
    for i, d in enumerate(DEVICES):
        _, to_close = coord.submit(round_id, d, f"k{r}{d}", _frame(cfg, 3 * r + i))
    assert to_close is not None
    asyncio.run(coord.close_round(to_close))
    meas = coord.round_status(round_id).measurements
    return meas if "rounds" in meas else meas["inner"]


def _schema_1(db: Path, aggregator: str, rounds: int) -> tuple[TaskConfig, int, Any]:
    """A task with `rounds` committed rounds, its database then made schema 1's (no
    tasks.agg_state column); the state the current store kept, for comparison."""
    cfg = task_config(rounds=6, clients_per_round=3, min_reports=1, aggregator=aggregator)
    coord = _start(db)
    task_id = _task(coord, cfg)
    for r in range(rounds):
        _round(coord, cfg, task_id, r)
    kept = decode_state(coord.store.task_aggregator_state(task_id) or b"")
    coord.store.close()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE tasks DROP COLUMN agg_state")
    con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()
    return cfg, task_id, kept


def test_a_schema_1_task_resumes_its_dp_count_and_its_next_round_is_accounted_as_such(
    tmp_path: Path,
) -> None:
    # Prepare: two released rounds under schema 1
    cfg, task_id, kept = _schema_1(tmp_path / "p.db", DP3, 2)
    assert kept[0] == 2
    # Execute: the current coordinator starts on it, then runs the third round
    coord = _start(tmp_path / "p.db")
    rt = coord.runtimes[task_id]
    resumed = rt.dp_rounds_released()
    total = all_tasks_privacy(coord.runtimes.values())
    third = _round(coord, cfg, task_id, 2)
    # Assert: 2 rounds at the start (before: 0), the third accounted as the third (before:
    # rounds 1, the first round's epsilon 10.7 instead of 21.4)
    assert resumed == 2
    assert total.epsilon == _eps(2)
    assert third["rounds"] == 3 and third["epsilon"] == _eps(3)
    assert rt.dp_rounds_released() == 3


def test_an_adaptive_clip_behind_adam_resumes_where_the_stored_state_would_have(
    tmp_path: Path,
) -> None:
    # Prepare: adam in front of an adaptive dp stage, three rounds, under schema 1
    _, task_id, kept = _schema_1(tmp_path / "p.db", ADAPTIVE, 3)
    # Execute
    coord = _start(tmp_path / "p.db")
    state = coord.runtimes[task_id].committed_state
    # Assert: the dp stage's (rounds, clip) equal the state the current store had kept, to the
    # bit (the clip stepped from the last round's recorded clip and noised fraction); adam's
    # moments start again (zeros), as under schema 1
    assert (state[2][0], state[2][1]) == (kept[2][0], kept[2][1]) == (3, kept[2][1])
    assert kept[2][1] != 1.0  # the clip moved, so a restart at the start would differ
    assert not state[0].any()
    accounted = coord.runtimes[task_id]._accounted
    assert accounted is not None
    assert dp_rounds_in_state(accounted, state) == 3


def test_the_count_is_the_committed_rounds_when_the_last_record_under_counts(
    tmp_path: Path,
) -> None:
    # Prepare: three released rounds under schema 1, the last one recorded as a schema-1
    # coordinator restarted before it would record it (its accountant then started at 0)
    db = tmp_path / "p.db"
    _, task_id, _ = _schema_1(db, DP3, 3)
    con = sqlite3.connect(db)
    (rid, raw) = con.execute(
        "SELECT round_id, measurements_json FROM rounds WHERE task_id=? ORDER BY seq DESC",
        (task_id,),
    ).fetchone()
    meas = json.loads(raw)
    meas["rounds"] = 1
    con.execute("UPDATE rounds SET measurements_json=? WHERE round_id=?", (json.dumps(meas), rid))
    con.commit()
    con.close()
    # Execute
    coord = _start(db)
    # Assert: three rounds released, whatever the last record's own count says
    assert coord.runtimes[task_id].dp_rounds_released() == 3
