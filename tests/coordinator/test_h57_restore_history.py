"""A start reads only what it needs of a task's history: the round to resume, the counts and
the last committed round. It parsed every round's selection and measurements (both as large as
the cohort) into memory at once: 2,000 rounds of a 1,000-device cohort with an anomaly stage's
per-device norms took about 850 MB more at start (measured ad hoc on the 2-core dev VM,
2026-11-29), so a long-running task's restart grew towards an out-of-memory kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service import store as store_module
from coordinator.service.rounds import Coordinator

from .test_service_support import SPEC, initial_params, task_config

HISTORY = 600  # more than one page of `Store.round_measurements`


def _task_with_history(db: Path, **over: object) -> int:
    """A task with HISTORY closed rounds (every 4th abandoned), then one open round."""
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    task_id = coord.create_task(task_config(rounds=10**6, **over))  # type: ignore[arg-type]
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    with coord.store.transaction() as tx:
        tx.executemany(
            "INSERT INTO rounds(task_id, seq, state, base_version, selected_json, target, "
            "min_reports, opened_unix, deadline_unix, measurements_json) "
            "VALUES (?, ?, ?, 0, ?, 1, 1, 0, 0, ?)",
            [
                (
                    task_id,
                    i,
                    "abandoned" if i % 4 == 0 else "committed",
                    json.dumps(["a", "b"]),
                    json.dumps({"norms": {"a": 1.0, "b": 2.0}, "seq": i}),
                )
                for i in range(1, HISTORY + 1)
            ],
        )
    coord.store.open_round(task_id, HISTORY + 1, 0, ["a", "b"], 2, 1, 0.0, 1e12)
    coord.store.close()
    return task_id


def test_a_start_parses_only_the_rounds_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    db = tmp_path / "p.db"
    task_id = _task_with_history(db)
    parsed: list[int] = []
    real = store_module._round

    def counting(row: tuple[object, ...]) -> store_module.RoundRow:
        parsed.append(int(row[0]))  # type: ignore[call-overload]
        return real(row)

    monkeypatch.setattr(store_module, "_round", counting)
    # Execute
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    # Assert: the open round and the last committed one; counts and sequence as before
    assert len(parsed) <= 2, len(parsed)
    rt = coord.runtimes[task_id]
    assert rt.seq == HISTORY + 1
    assert (rt.rounds_closed, rt.rounds_committed) == (HISTORY, HISTORY - HISTORY // 4)
    assert rt.current is not None and rt.current.selected == frozenset({"a", "b"})
    status = coord.task_status(task_id)
    assert (status.rounds_closed, status.current_round) == (HISTORY, rt.current.round_id)


def test_round_measurements_pages_through_the_whole_history_in_order(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    task_id = _task_with_history(db)
    store = Store(db)
    got = list(store.round_measurements(task_id))
    store.close()
    assert [m.get("seq") for _, m in got] == [*range(1, HISTORY + 1), None]
    assert [s for s, _ in got][-2:] == ["abandoned", "open"]  # round 600 is a 4th


def test_a_damaged_old_rounds_measurements_still_refuse_a_secure_task(tmp_path: Path) -> None:
    # A secure task's epsilon is rebuilt from every round's measurements: one that does not
    # parse refuses the task, as before (it cannot count what it cannot read).
    db = tmp_path / "p.db"
    task_id = _task_with_history(db, clients_per_round=3, secure={"coord_fraction": 0.2})
    store = Store(db)
    with store.transaction() as tx:
        tx.execute("UPDATE rounds SET measurements_json='{' WHERE seq=5 AND task_id=?", (task_id,))
    store.close()
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    assert task_id in coord.refused
    assert "measurements_json does not parse" in coord.refused[task_id].reason
