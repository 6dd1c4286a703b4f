"""Foreign entries under the app directory's own file names: a directory, a FIFO or a symlink
where the store keeps (or stages) a file. Each gives a `DeviceStoreError` naming the entry, or
is ignored; none hangs, writes outside the directory, or loses what the directory holds."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdk.device_store import AcceptedUpload, DeviceStore, DeviceStoreError, PendingUpload

from .test_h51_task_residuals import _frame
from .test_review_device_state import SPEC, _ef


class _Hang(Exception):
    """A call that did not return within its time (a blocking open or read)."""


@contextmanager
def _within(seconds: float) -> Iterator[None]:
    def expire(*_: Any) -> None:
        raise _Hang(f"no return within {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _held(root: Path) -> DeviceStore:
    """Task 1's residual (1.0) and an accepted record of round 4."""
    store = DeviceStore(root)
    store.save_residual(_ef(1.0), 1)
    store.save_accepted(AcceptedUpload(4, _frame(4), SPEC, 1))
    return store


STEPS: dict[str, Callable[[Path], Any]] = {
    "open": DeviceStore,
    "load_residual": lambda r: DeviceStore(r).load_residual(SPEC.size, 1),
    "load_pending": lambda r: DeviceStore(r).load_pending(),
    "load_accepted": lambda r: DeviceStore(r).load_accepted(),
    "load_model": lambda r: DeviceStore(r).load_model(1, SPEC.size),
    "save_residual": lambda r: DeviceStore(r).save_residual(_ef(3.0), 1),
    "save_pending": lambda r: DeviceStore(r).save_pending(
        PendingUpload(6, "k" * 32, _frame(6), 144, SPEC, 1), _ef(2.0)
    ),
    "save_accepted": lambda r: DeviceStore(r).save_accepted(
        AcceptedUpload(5, _frame(5), SPEC, 1), _ef(2.0)
    ),
}
NAMES = [
    "residual-1.bin",
    "residual-1.bin.tmp",
    "pending.json",
    "pending.frame",
    "pending.residual",
    "accepted-5.json",
    "accepted-5.frame",
    "accepted-5.residual",
    "accepted.json",
    "accepted.frame",
]


@pytest.mark.parametrize("name", NAMES)
def test_a_directory_under_a_store_file_name_is_named_or_ignored(tmp_path: Path, name: str) -> None:
    # Prepare: what the directory holds, and a foreign directory under one of its names
    _held(tmp_path)
    (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / name).mkdir()

    # Execute: every step either works or raises DeviceStoreError naming the entry
    for step, call in STEPS.items():
        try:
            call(tmp_path)
        except DeviceStoreError as exc:
            assert name in str(exc) and "directory" in str(exc), (step, str(exc))

    # Assert: with the directory gone, nothing held before is lost
    (tmp_path / name).rmdir()
    store = DeviceStore(tmp_path)
    assert store.load_accepted(4) is not None
    held = store.load_residual(SPEC.size, 1)
    assert held is not None and float(held.residual[0]) in (1.0, 2.0, 3.0)


def test_a_fifo_left_as_a_temp_file_does_not_block_a_write(tmp_path: Path) -> None:
    store = _held(tmp_path)
    os.mkfifo(tmp_path / "residual-1.bin.tmp")  # after the open, which drops stale temps

    with _within(2.0):
        store.save_residual(_ef(3.0), 1)

    held = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert held is not None and float(held.residual[0]) == 3.0


def test_a_symlink_left_as_a_temp_file_is_not_written_through(tmp_path: Path) -> None:
    # Prepare: a temp name pointing at a file outside the app directory
    app, outside = tmp_path / "app", tmp_path / "outside.txt"
    store = _held(app)
    outside.write_bytes(b"not the store's")
    (app / "residual-1.bin.tmp").symlink_to(outside)

    # Execute
    store.save_residual(_ef(3.0), 1)

    # Assert: the outside file is untouched; the residual is a plain file in the directory
    assert outside.read_bytes() == b"not the store's"
    assert not (app / "residual-1.bin").is_symlink()
    held = DeviceStore(app).load_residual(SPEC.size, 1)
    assert held is not None and float(held.residual[0]) == 3.0


def _meta_for_empty_frame(round_id: int, **extra: Any) -> bytes:
    meta = {"round_id": round_id, "bytes": 0, "sha256": hashlib.sha256(b"").hexdigest(), **extra}
    return json.dumps(meta).encode()


def test_a_fifo_as_the_pending_frame_is_no_upload_and_does_not_block(tmp_path: Path) -> None:
    # Prepare: pending.json describing an empty frame, and a FIFO as the frame
    store = _held(tmp_path)
    (tmp_path / "pending.json").write_bytes(_meta_for_empty_frame(6, key="k" * 32))
    os.mkfifo(tmp_path / "pending.frame")

    # Execute
    with _within(2.0):
        pending = store.load_pending()

    # Assert
    assert pending is None


def test_a_fifo_as_a_records_frame_is_no_record_and_does_not_block(tmp_path: Path) -> None:
    # Prepare: a record of round 5 describing an empty frame, and a FIFO as the frame
    _held(tmp_path)
    (tmp_path / "accepted-5.json").write_bytes(_meta_for_empty_frame(5, spec=SPEC.to_json()))
    os.mkfifo(tmp_path / "accepted-5.frame")

    # Execute
    with _within(2.0):
        store = DeviceStore(tmp_path)
        found = store.load_accepted(5)
        oldest = store.load_accepted()

    # Assert: no record of round 5; round 4's still loads
    assert found is None
    assert oldest is not None and oldest.round_id == 4
    np.testing.assert_array_equal(
        np.frombuffer(oldest.frame, np.uint8), np.frombuffer(_frame(4), np.uint8)
    )


# -- JSON the parser cannot take: nesting past the recursion limit, integers past 4300 digits --

DEEP = b"[" * 200_000
LONG_INT = b'{"round_id": ' + b"7" * 5000 + b"}"


@pytest.mark.parametrize("body", [DEEP, LONG_INT], ids=["deep", "long-int"])
def test_a_foreign_record_json_is_no_record(tmp_path: Path, body: bytes) -> None:
    # Prepare: round 5's record metadata is JSON the parser refuses with RecursionError or a
    # bare ValueError (not a JSONDecodeError)
    _held(tmp_path)
    (tmp_path / "accepted-5.json").write_bytes(body)
    (tmp_path / "accepted-5.frame").write_bytes(_frame(5))

    # Execute
    store = DeviceStore(tmp_path)

    # Assert: no record of round 5, and round 4's still loads (a check-in is not stopped)
    assert store.load_accepted(5) is None
    oldest = store.load_accepted()
    assert oldest is not None and oldest.round_id == 4


@pytest.mark.parametrize("body", [DEEP, LONG_INT], ids=["deep", "long-int"])
def test_unparsable_state_and_pending_json_are_device_store_errors(
    tmp_path: Path, body: bytes
) -> None:
    # Prepare
    _held(tmp_path)
    (tmp_path / "state.json").write_bytes(body)
    (tmp_path / "pending.json").write_bytes(body)
    (tmp_path / "pending.frame").write_bytes(b"frame")

    # Execute / Assert: the store's own error, naming the file; the claim lookup says none
    store = DeviceStore(tmp_path)
    with pytest.raises(DeviceStoreError, match="state.json"):
        store.state()
    with pytest.raises(DeviceStoreError, match="pending.json"):
        store.load_pending()
    assert store.legacy_claimer() is None
