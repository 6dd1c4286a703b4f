"""What the store is asked to keep must be what it can read back: a pending upload or record
it would write but never load again (a key or task id its reader refuses) is refused before
anything is written, and what the directory held stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk.device_store import AcceptedUpload, DeviceStore, PendingUpload

from .test_h51_task_residuals import _frame
from .test_review_device_state import SPEC, _ef


@pytest.mark.parametrize(
    ("key", "round_id", "task_id"),
    [
        ("é" * 8, 6, 1),  # not ASCII
        ("k" * 129, 6, 1),  # longer than 128
        ("", 6, 1),
        ("k" * 32, -1, 1),
        ("k" * 32, 2**63, 1),
        ("k" * 32, 6, -1),
        ("k" * 32, 6, 2**63),
    ],
    ids=["non-ascii-key", "long-key", "empty-key", "negative-round", "huge-round",
         "negative-task", "huge-task"],
)  # fmt: skip
def test_a_pending_upload_the_store_could_not_read_back_is_refused(
    tmp_path: Path, key: str, round_id: int, task_id: int
) -> None:
    # Prepare: an upload already pending
    store = DeviceStore(tmp_path)
    store.save_pending(PendingUpload(5, "a" * 32, _frame(5), 144, SPEC, 1), _ef(1.0))

    # Execute: before, it was written, and every later load_pending raised
    with pytest.raises(ValueError, match="not saved"):
        store.save_pending(PendingUpload(round_id, key, _frame(6), 144, SPEC, task_id), _ef(2.0))

    # Assert: the earlier upload and its residual are still held
    pending = DeviceStore(tmp_path).load_pending()
    assert pending is not None and pending.key == "a" * 32
    held = store.load_residual(SPEC.size, 1)
    assert held is not None and float(held.residual[0]) == 1.0


@pytest.mark.parametrize("task_id", [-1, 2**63])
def test_a_record_or_residual_naming_no_task_id_is_refused(tmp_path: Path, task_id: int) -> None:
    # Before: a record with task_id -1 was written and then never loaded (its content lost),
    # a residual failed with OverflowError
    store = DeviceStore(tmp_path)
    with pytest.raises(ValueError, match="not saved"):
        store.save_accepted(AcceptedUpload(9, _frame(9), SPEC, task_id))
    with pytest.raises(ValueError, match="not saved"):
        store.save_residual(_ef(1.0), task_id)
    assert store.accepted_rounds() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []
