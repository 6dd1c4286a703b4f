"""The check-in's `round_outcome` for a closed secure round parses the round's stored row once
per round, not once per check-in: every device of the round asks, and its selection and
`dropped` list grow with the cohort (a plain round's answer reads no JSON at all, see
test_h57_outcome_cost.py). Work is counted (row parses), never timed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service import store as store_module
from coordinator.service.rounds import CLOSED_ROUNDS_KEPT, Coordinator
from protocol.messages import UploadOutcome

from .test_h69_closed_round_cost import _Counted
from .test_service_support import SPEC, initial_params, task_config


def _device(i: int) -> str:
    return f"{i:032x}"


def _coordinator(db: Path) -> Coordinator:
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    return coord


def _secure_task(coord: Coordinator) -> int:
    task_id = coord.create_task(
        task_config(secure={"coord_fraction": 0.2}, clients_per_round=3)  # type: ignore[arg-type]
    )
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    return task_id


def _committed_secure_round(
    coord: Coordinator, task_id: int, selected: list[str], meas: dict[str, Any]
) -> int:
    """A committed round of a secure task with these measurements (as _close_secure stores,
    written directly: only the stored row matters to the outcome)."""
    store = coord.store
    seq = store.count_rounds(task_id) + 1
    round_id = store.open_round(task_id, seq, 0, selected, len(selected), 1, 0.0, 1.0)
    with store.transaction() as tx:
        tx.execute(
            "UPDATE rounds SET state='committed', measurements_json=? WHERE round_id=?",
            (json.dumps(meas), round_id),
        )
    return round_id


def _walked(selected: list[str], meas: dict[str, Any], device: str) -> UploadOutcome:
    """The answer as the row read at every check-in gave it (before the kept round)."""
    dropped = meas.get("dropped")
    inside = device in selected and not (isinstance(dropped, list) and device in dropped)
    return UploadOutcome.COMMITTED if inside else UploadOutcome.EXCLUDED


def test_the_check_ins_of_a_secure_rounds_cohort_parse_its_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a committed secure round of 400 devices, a quarter of them dropped
    coord = _coordinator(tmp_path / "p.db")
    task_id = _secure_task(coord)
    selected = [_device(i) for i in range(400)]
    meas = {"secure": True, "contributors": 300, "dropped": selected[::4]}
    round_id = _committed_secure_round(coord, task_id, selected, meas)
    parses = _Counted(store_module._round)
    monkeypatch.setattr(store_module, "_round", parses)
    # Execute: each device of the cohort asks at its next check-in, and one outsider
    answers = [coord.upload_outcome(round_id, d) for d in [*selected, _device(999)]]
    # Assert: one parse for 401 answers, each the answer the row gives
    assert parses.calls == 1
    assert answers == [_walked(selected, meas, d) for d in [*selected, _device(999)]]
    assert answers.count(UploadOutcome.COMMITTED) == 300
    assert answers[-1] == UploadOutcome.EXCLUDED


def test_a_secure_round_read_by_round_status_is_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the kept rounds are shared with GET /v1/rounds/{id} and the membership check
    coord = _coordinator(tmp_path / "p.db")
    task_id = _secure_task(coord)
    selected = [_device(i) for i in range(5)]
    round_id = _committed_secure_round(
        coord, task_id, selected, {"secure": True, "dropped": [selected[1]]}
    )
    parses = _Counted(store_module._round)
    monkeypatch.setattr(store_module, "_round", parses)
    # Execute
    coord.round_status(round_id, only=selected[0])
    outcomes = [coord.upload_outcome(round_id, d) for d in selected[:2]]
    member = coord.in_round(round_id, selected[1])
    # Assert
    assert parses.calls == 1
    assert outcomes == [UploadOutcome.COMMITTED, UploadOutcome.EXCLUDED] and member


def test_a_damaged_secure_row_is_pending_at_every_check_in_and_not_kept(tmp_path: Path) -> None:
    # Prepare: the row is damaged before any coordinator read it
    coord = _coordinator(tmp_path / "p.db")
    task_id = _secure_task(coord)
    selected = [_device(i) for i in range(3)]
    round_id = _committed_secure_round(coord, task_id, selected, {"secure": True, "dropped": []})
    with coord.store.transaction() as tx:
        tx.execute("UPDATE rounds SET measurements_json='{' WHERE round_id=?", (round_id,))
    # Execute
    answers = [coord.upload_outcome(round_id, selected[0]) for _ in range(3)]
    # Assert: pending (cannot be read; the device asks again), and nothing kept of it
    assert answers == [UploadOutcome.PENDING] * 3
    assert round_id not in coord._closed_rounds


def test_the_kept_secure_rounds_are_bounded(tmp_path: Path) -> None:
    # Prepare: more closed secure rounds than are kept, each asked about
    coord = _coordinator(tmp_path / "p.db")
    task_id = _secure_task(coord)
    selected = [_device(i) for i in range(3)]
    rounds = [
        _committed_secure_round(coord, task_id, selected, {"secure": True, "dropped": []})
        for _ in range(CLOSED_ROUNDS_KEPT + 4)
    ]
    # Execute
    answers = [coord.upload_outcome(r, selected[0]) for r in rounds]
    # Assert
    assert answers == [UploadOutcome.COMMITTED] * len(rounds)
    assert list(coord._closed_rounds) == rounds[-CLOSED_ROUNDS_KEPT:]


_IDS = [_device(i) for i in range(6)]
_ITEM = st.one_of(
    st.sampled_from(_IDS), st.integers(0, 3), st.none(), st.lists(st.sampled_from(_IDS), max_size=2)
)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(
    selected=st.lists(st.sampled_from(_IDS), max_size=6, unique=True),
    dropped=st.one_of(
        st.lists(_ITEM, max_size=6),
        st.sampled_from(_IDS),
        st.dictionaries(st.sampled_from(_IDS), st.integers(0, 1), max_size=3),
        st.none(),
        st.just("absent"),
    ),
)
def test_the_kept_answer_is_the_row_read_answer_for_any_dropped_list(
    tmp_path_factory: pytest.TempPathFactory, selected: list[str], dropped: Any
) -> None:
    # Prepare: any `dropped` a row may hold (a list with other items, not a list, none)
    coord = _coordinator(tmp_path_factory.mktemp("p") / "p.db")
    task_id = _secure_task(coord)
    meas: dict[str, Any] = {"secure": True}
    if dropped != "absent":
        meas["dropped"] = dropped
    round_id = _committed_secure_round(coord, task_id, selected, meas)
    # Execute / Assert: every id, member or not, twice (first read, then kept)
    for _ in range(2):
        for d in _IDS:
            assert coord.upload_outcome(round_id, d) == _walked(selected, meas, d), (d, meas)
    coord.store.close()
