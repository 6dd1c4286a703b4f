"""The check-in's `round_outcome` for a plain round reads the round's state and the device's
upload row, not the round's stored selection and measurements: every device of a round asks
once, and both grow with the cohort (a committed round of 10,000 devices with an anomaly
stage's per-device norms: ~6 ms a check-in, measured ad hoc on the 2-core dev VM, 2026-11-29,
so about a minute of event loop per round)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from coordinator.service.store import DamagedRow
from protocol.messages import UploadOutcome

from .test_service_support import SPEC, initial_params, task_config


def _committed_round(tmp_path: Path, secure: bool = False) -> tuple[Coordinator, int]:
    """A running task with a committed round stored: a reported, b selected and silent."""
    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    extra = {"secure": {"coord_fraction": 0.2}, "clients_per_round": 3} if secure else {}
    task_id = coord.create_task(task_config(**extra))  # type: ignore[arg-type]
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    store = coord.store
    round_id = store.open_round(task_id, 1, 0, ["a", "b", "c"], 3, 1, 0.0, 1.0)
    meas = {"secure": True, "dropped": ["b", "c"]} if secure else {"norms": {"a": 1.0}}
    with store.transaction() as tx:
        store.insert_update(tx, round_id, "a", "k", b"frame", 0.5)
        tx.execute(
            "UPDATE rounds SET state='committed', measurements_json=? WHERE round_id=?",
            (json.dumps(meas), round_id),
        )
    return coord, round_id


def test_a_plain_rounds_outcome_parses_none_of_its_stored_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coord, round_id = _committed_round(tmp_path)

    def no_parse(self: Store, round_id: int) -> None:
        raise AssertionError("the round's JSON was parsed")

    monkeypatch.setattr(Store, "round", no_parse)
    assert coord.upload_outcome(round_id, "a") == UploadOutcome.COMMITTED
    assert coord.upload_outcome(round_id, "b") == UploadOutcome.EXCLUDED
    assert coord.upload_outcome(round_id + 1, "a") == UploadOutcome.UNKNOWN


def test_a_plain_round_whose_selection_is_damaged_still_answers(tmp_path: Path) -> None:
    # Its answer does not depend on the damaged column, so it is given, not `pending`.
    coord, round_id = _committed_round(tmp_path)
    with coord.store.transaction() as tx:
        tx.execute("UPDATE rounds SET selected_json='[' WHERE round_id=?", (round_id,))
    with pytest.raises(DamagedRow):
        coord.store.round(round_id)
    assert coord.upload_outcome(round_id, "a") == UploadOutcome.COMMITTED


def test_a_secure_rounds_outcome_still_reads_its_dropped_list(tmp_path: Path) -> None:
    coord, round_id = _committed_round(tmp_path, secure=True)
    assert coord.upload_outcome(round_id, "a") == UploadOutcome.COMMITTED
    assert coord.upload_outcome(round_id, "b") == UploadOutcome.EXCLUDED
    with coord.store.transaction() as tx:
        tx.execute("UPDATE rounds SET measurements_json='{' WHERE round_id=?", (round_id,))
    # A closed round's row no longer changes, so the coordinator keeps the parse it read
    # (helper-86: once per round, as GET /v1/rounds/{id} and the membership check do; a hand
    # edit after the first read is not seen until the round leaves the kept rounds or a
    # restart, operations.md). A coordinator that reads the damaged row answers `pending`.
    assert coord.upload_outcome(round_id, "a") == UploadOutcome.COMMITTED
    coord.store.close()
    again = Coordinator(Store(tmp_path / "p.db"), ServiceConfig(db_path=str(tmp_path / "p.db")))
    again.restore()
    assert again.upload_outcome(round_id, "a") == UploadOutcome.PENDING  # cannot be read
    assert again.upload_outcome(round_id, "b") == UploadOutcome.PENDING
