"""More than one accepted upload awaiting its round's outcome (accepted-<r>.* in the app
directory): a newer accepted upload no longer replaces an older unsettled one; past
MAX_ACCEPTED the oldest is forgotten; an older SDK's single accepted.json is moved over without
loss; a record or refused upload of another model is never folded into (nor replaces) the
residual held. Every new write point is crashed at, as in test_device_store_accepted."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sdk.device_store as device_store
from compression import ErrorFeedback, ModelSpec
from sdk.device_store import MAX_ACCEPTED, AcceptedUpload, DeviceStore, PendingUpload

from .test_review_device_state import SPEC, _Crash, _crash_on, _ef

SENT = {
    r: np.random.default_rng(r).standard_normal(SPEC.size).astype(np.float32) for r in range(1, 12)
}
# Another task's model, of another size.
OTHER = ModelSpec.from_shapes([("w", (3, 5)), ("b", (5,))])


def _residual(root: Path, size: int = SPEC.size) -> np.ndarray:
    ef = DeviceStore(root).load_residual(size)
    assert ef is not None
    return ef.residual


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _frame(r: int) -> bytes:
    return f"frame-of-round-{r}".encode()


def _held(root: Path, rounds: list[int], residual: float = 1.0) -> DeviceStore:
    """A directory holding the accepted records of `rounds`, with `residual` everywhere."""
    store = DeviceStore(root)
    store.save_residual(_ef(residual))
    for r in rounds:
        store.save_pending(PendingUpload(r, "k" * 32, _frame(r), 144, SPEC), _ef(residual))
        pending = store.load_pending()
        assert pending is not None
        store.accept_pending(pending, SPEC)
    return store


# -- more than one record ---------------------------------------------------------------------


def test_two_accepted_uploads_are_both_kept_and_each_returns_once(tmp_path: Path) -> None:
    # Prepare: round 7 accepted, its outcome unknown (e.g. still pending), then round 8 accepted
    store = _held(tmp_path, [7, 8])

    # Execute: round 7 turns out abandoned, round 8 committed; answers repeated
    first = store.return_accepted(7, SENT[7], SPEC.size)
    again = store.return_accepted(7, SENT[7], SPEC.size)
    store.forget_accepted(8)

    # Assert: 7's content back once (before the fix, 8 replaced 7 and 7 returned nothing)
    want = (_ef(1.0).residual + SENT[7]).astype(np.float32)
    assert first is not None and again is None
    np.testing.assert_array_equal(_residual(tmp_path), want)
    assert DeviceStore(tmp_path).accepted_rounds() == []
    assert _names(tmp_path) == ["residual.bin"]


def test_settling_one_record_leaves_the_others_whole(tmp_path: Path) -> None:
    # Prepare
    store = _held(tmp_path, [3, 5, 9])

    # Execute
    store.return_accepted(5, SENT[5], SPEC.size)

    # Assert
    again = DeviceStore(tmp_path)
    assert again.accepted_rounds() == [3, 9]
    for r in (3, 9):
        record = again.load_accepted(r)
        assert record is not None and record.frame == _frame(r)
    oldest = again.load_accepted()
    assert oldest is not None and oldest.round_id == 3


def test_past_the_bound_the_oldest_record_is_forgotten(tmp_path: Path) -> None:
    # Prepare / Execute: one more record than the bound
    rounds = list(range(1, MAX_ACCEPTED + 2))
    store = _held(tmp_path, rounds)

    # Assert: the oldest counted as delivered (no content added), the rest held
    assert store.accepted_rounds() == rounds[1:]
    assert store.return_accepted(1, SENT[1], SPEC.size) is None
    np.testing.assert_array_equal(_residual(tmp_path), _ef(1.0).residual)
    assert len([n for n in _names(tmp_path) if n.startswith("accepted-")]) == 2 * MAX_ACCEPTED


def test_the_same_upload_accepted_twice_is_one_record(tmp_path: Path) -> None:
    # Prepare: a crash between acceptance and forgetting the pending copy, then the re-send's
    # duplicate receipt accepts it again
    store = _held(tmp_path, [4])

    # Execute
    store.save_accepted(AcceptedUpload(4, _frame(4), SPEC))

    # Assert
    assert store.accepted_rounds() == [4]


def test_a_record_of_round_zero_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="round id"):
        DeviceStore(tmp_path).save_accepted(AcceptedUpload(0, b"x", SPEC))


# -- crash at every write point of the new steps ---------------------------------------------

# (target, attribute, file name) of each write a step makes: device_store._write of a file,
# device_store._unlink of one, os.replace of one (its source).
_W, _U = (device_store, "_write"), (device_store, "_unlink")


def _crash_points(points: list[tuple[Any, str, str]]) -> list[Any]:
    return [pytest.param(t, a, n, id=f"{a}-{n}") for t, a, n in points]


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    _crash_points(
        [
            (*_W, "accepted-8.settled"),
            (*_U, "accepted-8.json"),
            (os, "replace", "accepted-8.settled"),
            (*_U, "accepted-8.frame"),
        ]
    ),
)
def test_a_return_crashed_anywhere_adds_once_and_leaves_other_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: records 7, 8, 9; returning 8 dies at one write
    _held(tmp_path, [7, 8, 9])
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).return_accepted(8, SENT[8], SPEC.size)
    monkeypatch.undo()

    # Execute: restart; the answer comes again (a check-in after the restart)
    store = DeviceStore(tmp_path)
    between = _residual(tmp_path)
    committed = 8 not in store.accepted_rounds()
    store.return_accepted(8, SENT[8], SPEC.size)

    # Assert: before the commit point untouched, after it added; once either way
    want = (_ef(1.0).residual + SENT[8]).astype(np.float32)
    np.testing.assert_array_equal(between, want if committed else _ef(1.0).residual)
    np.testing.assert_array_equal(_residual(tmp_path), want)
    assert store.accepted_rounds() == [7, 9]
    for r in (7, 9):
        record = store.load_accepted(r)
        assert record is not None and record.frame == _frame(r)
    assert _names(tmp_path) == sorted(
        ["accepted-7.frame", "accepted-7.json", "accepted-9.frame", "accepted-9.json"]
        + ["residual.bin"]
    )


_SAVE_POINTS = [
    (*_U, "accepted-9.json"),
    (*_W, "accepted-9.frame"),
    (*_W, "accepted-9.residual"),
    (*_W, "accepted-9.json"),
    (*_W, "residual.bin"),
    (*_U, "accepted-9.residual"),
    (*_U, "accepted-1.json"),
    (*_U, "accepted-1.frame"),
]


@pytest.mark.parametrize(("target", "attr", "name"), _crash_points(_SAVE_POINTS))
def test_a_save_past_the_bound_crashed_anywhere_keeps_old_or_new_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: MAX_ACCEPTED records (rounds 1..8) with residual 1.0; a secure round saves
    # record 9 with its residual 2.0, which evicts round 1, and dies at one write
    assert MAX_ACCEPTED == 8
    _held(tmp_path, list(range(1, 9)))
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).save_accepted(AcceptedUpload(9, _frame(9), SPEC), _ef(2.0))
    monkeypatch.undo()

    # Execute: restart
    store = DeviceStore(tmp_path)
    rounds = store.accepted_rounds()
    loaded = _residual(tmp_path)

    # Assert: record 9 and its residual together or neither; never over the bound; every
    # record held loads whole
    if 9 in rounds:
        np.testing.assert_array_equal(loaded, _ef(2.0).residual)
        assert rounds == list(range(2, 10))
    else:
        np.testing.assert_array_equal(loaded, _ef(1.0).residual)
        assert rounds == list(range(1, 9))
    for r in rounds:
        record = store.load_accepted(r)
        assert record is not None and record.frame == _frame(r)
    left = [n for n in _names(tmp_path) if n.startswith("accepted-")]
    assert sorted(left) == sorted(f"accepted-{r}.{k}" for r in rounds for k in ("json", "frame"))


# -- an older SDK's single record -------------------------------------------------------------


def _legacy(root: Path, round_id: int = 7, residual: float = 1.0) -> None:
    """What the SDK before this change left: accepted.json + accepted.frame, one record."""
    root.mkdir(parents=True, exist_ok=True)
    DeviceStore(root).save_residual(_ef(residual))
    frame = _frame(round_id)
    meta = {
        "round_id": round_id,
        "bytes": len(frame),
        "sha256": hashlib.sha256(frame).hexdigest(),
        "spec": SPEC.to_json(),
    }
    (root / "accepted.frame").write_bytes(frame)
    (root / "accepted.json").write_text(json.dumps(meta))


def test_an_older_sdks_record_is_moved_over_and_settles_once(tmp_path: Path) -> None:
    # Prepare
    _legacy(tmp_path)

    # Execute: the new SDK opens the directory, the round turns out abandoned
    store = DeviceStore(tmp_path)
    record = store.load_accepted()
    returned = store.return_accepted(7, SENT[7], SPEC.size)

    # Assert
    assert record is not None and (record.round_id, record.frame) == (7, _frame(7))
    assert returned is not None
    want = (_ef(1.0).residual + SENT[7]).astype(np.float32)
    np.testing.assert_array_equal(_residual(tmp_path), want)
    assert _names(tmp_path) == ["residual.bin"]


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    _crash_points(
        [
            (*_W, "accepted-7.frame"),
            (*_W, "accepted-7.json"),
            (*_U, "accepted.json"),
            (*_U, "accepted.frame"),
        ]
    ),
)
def test_moving_an_older_record_crashed_anywhere_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: the move dies at one write
    _legacy(tmp_path)
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path)
    monkeypatch.undo()

    # Execute: restart
    store = DeviceStore(tmp_path)

    # Assert: the one record, once, whole
    assert store.accepted_rounds() == [7]
    record = store.load_accepted(7)
    assert record is not None and record.frame == _frame(7)
    assert _names(tmp_path) == ["accepted-7.frame", "accepted-7.json", "residual.bin"]
    np.testing.assert_array_equal(_residual(tmp_path), _ef(1.0).residual)


def test_an_older_sdks_open_windows_are_finished_before_the_move(tmp_path: Path) -> None:
    # Prepare: (a) a secure save that committed accepted.json but not yet its residual 2.0;
    # (b) a return that committed (accepted.json gone) before renaming accepted.settled
    _legacy(tmp_path / "a")
    (tmp_path / "a" / "accepted.residual").write_bytes(_ef(2.0).to_bytes())
    _legacy(tmp_path / "b")
    (tmp_path / "b" / "accepted.json").unlink()
    (tmp_path / "b" / "accepted.settled").write_bytes(_ef(3.0).to_bytes())

    # Execute
    a, b = DeviceStore(tmp_path / "a"), DeviceStore(tmp_path / "b")

    # Assert
    assert a.accepted_rounds() == [7] and b.accepted_rounds() == []
    np.testing.assert_array_equal(_residual(tmp_path / "a"), _ef(2.0).residual)
    np.testing.assert_array_equal(_residual(tmp_path / "b"), _ef(3.0).residual)
    assert _names(tmp_path / "b") == ["residual.bin"]


def test_a_torn_older_record_is_dropped_as_it_was_ignored(tmp_path: Path) -> None:
    # Prepare: a record whose frame does not match its digest (no record for the older SDK)
    _legacy(tmp_path)
    (tmp_path / "accepted.frame").write_bytes(b"X" * len(_frame(7)))

    # Execute
    store = DeviceStore(tmp_path)

    # Assert
    assert store.accepted_rounds() == [] and _names(tmp_path) == ["residual.bin"]


# -- another model's residual -----------------------------------------------------------------


def _other_residual(value: float) -> ErrorFeedback:
    ef = ErrorFeedback(OTHER.size)
    ef.residual = np.full(OTHER.size, value, dtype=np.float32)
    return ef


def test_a_record_of_another_model_is_not_folded_into_the_residual_held(tmp_path: Path) -> None:
    # Prepare: a record of SPEC's round 7, then the device moved to a task of another size
    # and saved that model's residual
    store = _held(tmp_path, [7])
    store.save_residual(_other_residual(0.5))
    before = (tmp_path / "residual.bin").read_bytes()

    # Execute: round 7 turns out abandoned
    returned = store.return_accepted(7, SENT[7], SPEC.size)

    # Assert: the other model's residual is byte for byte as it was (before the fix it was
    # replaced by SPEC's zeros + SENT[7]); the record is dropped, nothing else held
    assert returned is None
    assert (tmp_path / "residual.bin").read_bytes() == before
    np.testing.assert_array_equal(_residual(tmp_path, OTHER.size), _other_residual(0.5).residual)
    assert store.accepted_rounds() == [] and _names(tmp_path) == ["residual.bin"]


def test_a_refused_upload_of_another_model_leaves_the_residual_held(tmp_path: Path) -> None:
    # Prepare: an upload of SPEC pending; a secure round of the other model saved its residual
    store = DeviceStore(tmp_path)
    store.save_pending(PendingUpload(7, "k" * 32, _frame(7), 144, SPEC), _ef(1.0))
    store.save_residual(_other_residual(0.5))
    before = (tmp_path / "residual.bin").read_bytes()

    # Execute
    returned = store.refuse_pending(SENT[7], SPEC.size)

    # Assert
    assert returned is None and store.load_pending() is None
    assert (tmp_path / "residual.bin").read_bytes() == before
    assert _names(tmp_path) == ["residual.bin"]


def test_a_record_with_no_residual_held_starts_one(tmp_path: Path) -> None:
    # Prepare: a secure record saved before any residual existed
    store = DeviceStore(tmp_path)
    store.save_accepted(AcceptedUpload(7, _frame(7), SPEC))

    # Execute
    returned = store.return_accepted(7, SENT[7], SPEC.size)

    # Assert
    assert returned is not None
    np.testing.assert_array_equal(_residual(tmp_path), SENT[7])


def test_points_cover_every_write_of_a_secure_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The crash points above are every write a save past the bound makes: recorded here, so a
    # new write without a crash test fails
    _held(tmp_path, list(range(1, 9)))
    seen: list[tuple[str, str]] = []

    def spy(attr: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append((attr, Path(path).name))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(device_store, "_write", spy("_write", device_store._write))
    monkeypatch.setattr(device_store, "_unlink", spy("_unlink", device_store._unlink))
    DeviceStore(tmp_path).save_accepted(AcceptedUpload(9, _frame(9), SPEC), _ef(2.0))
    monkeypatch.undo()

    assert [x for x in seen if x[1] != "pending.residual" and x[1] != "pending.refused"] == [
        (a, n) for _, a, n in _SAVE_POINTS
    ]


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    _crash_points([(*_U, "accepted-8.json"), (*_U, "accepted-8.frame")]),
)
def test_a_forget_crashed_anywhere_adds_nothing_and_leaves_other_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: records 7, 8, 9; forgetting 8 (committed) dies at one write
    _held(tmp_path, [7, 8, 9])
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).forget_accepted(8)
    monkeypatch.undo()

    # Execute: restart; the answer comes again
    store = DeviceStore(tmp_path)
    store.forget_accepted(8)

    # Assert
    np.testing.assert_array_equal(_residual(tmp_path), _ef(1.0).residual)
    assert store.accepted_rounds() == [7, 9]
    assert len(_names(tmp_path)) == 5


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    _crash_points([(*_U, "accepted-7.json"), (*_U, "accepted-7.frame")]),
)
def test_dropping_a_record_of_another_model_crashed_anywhere_keeps_that_residual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: record 7 of SPEC, the other model's residual held; its return dies at one write
    store = _held(tmp_path, [7])
    store.save_residual(_other_residual(0.5))
    before = (tmp_path / "residual.bin").read_bytes()
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).return_accepted(7, SENT[7], SPEC.size)
    monkeypatch.undo()

    # Execute: restart; the answer comes again
    again = DeviceStore(tmp_path)
    returned = again.return_accepted(7, SENT[7], SPEC.size)

    # Assert
    assert returned is None and again.accepted_rounds() == []
    assert (tmp_path / "residual.bin").read_bytes() == before
    assert _names(tmp_path) == ["residual.bin"]


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    _crash_points(
        [
            (os, "replace", "pending.residual"),
            (*_U, "pending.json"),
            (*_U, "pending.frame"),
            (*_U, "pending.residual"),
        ]
    ),
)
def test_dropping_a_refused_upload_whose_window_holds_the_residual_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: the residual held is in the pending.residual window (save_pending committed,
    # its rewrite of residual.bin crashed), of OTHER's size; a refusal then hands content of
    # SPEC's size (not a state the client makes: the guard is defensive) and dies at one write
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(1.0))
    _crash_on(monkeypatch, "residual.bin")
    with pytest.raises(_Crash):
        store.save_pending(PendingUpload(7, "k" * 32, _frame(7), 144, OTHER), _other_residual(0.5))
    monkeypatch.undo()
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).refuse_pending(SENT[7], SPEC.size)
    monkeypatch.undo()

    # Execute: restart; the refusal again if still pending, else the next save's cleanup
    again = DeviceStore(tmp_path)
    if again.load_pending() is not None:
        assert again.refuse_pending(SENT[7], SPEC.size) is None
    again.clear_pending()

    # Assert: the window's residual is the one held, whole; nothing pending
    np.testing.assert_array_equal(_residual(tmp_path, OTHER.size), _other_residual(0.5).residual)
    assert again.load_pending() is None and _names(tmp_path) == ["residual.bin"]
