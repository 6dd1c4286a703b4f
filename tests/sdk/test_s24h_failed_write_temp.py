"""A write of the app directory that fails (a full disk: ENOSPC from os.write or os.fsync, or a
rename that fails) removes its temp file before the error propagates. Before, `_write` closed
the descriptor and left `<name>.tmp` behind: in a long-lived process on a full disk every
failed write kept its bytes until the directory was next opened (and one named after a round,
accepted-<r>.frame.tmp, is never written over), taking room the later writes needed."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sdk.device_store as device_store
from compression import ErrorFeedback, ModelSpec
from sdk.device_store import AcceptedUpload, DeviceStore, PendingUpload

SPEC = ModelSpec.from_shapes([("w", (4, 8)), ("b", (4,))])


def _ef(value: float) -> ErrorFeedback:
    ef = ErrorFeedback(SPEC.size)
    ef.residual = np.full(SPEC.size, value, dtype=np.float32)
    return ef


def _disk_full(*_: Any) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


# Each step writes one or more files; the fault hits its first call of the faulty function.
_STEPS: dict[str, Callable[[DeviceStore], object]] = {
    "state": lambda s: s.update_state(round=2),
    "residual": lambda s: s.save_residual(_ef(2.0), 7, SPEC),
    "pending": lambda s: s.save_pending(PendingUpload(5, "k5", b"frame-5", 40, SPEC, 7), _ef(3.0)),
    "accepted": lambda s: s.save_accepted(AcceptedUpload(9, b"frame-9", SPEC, 7)),
    "model": lambda s: s.save_model(7, np.ones(SPEC.size, np.float32), 4, "0" * 64, True),
}


@pytest.mark.parametrize("fault", ["write", "fsync", "replace"])
@pytest.mark.parametrize("step", sorted(_STEPS))
def test_a_failed_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, fault: str
) -> None:
    # Prepare: a directory with a state, a residual and a model of task 7
    store = DeviceStore(tmp_path)
    store.update_state(round=1)
    store.save_residual(_ef(1.0), 7, SPEC)
    store.save_model(7, np.zeros(SPEC.size, np.float32), 3, "0" * 64, True)
    before = _files(tmp_path)

    # Execute: the disk is full for this step (only the store's calls run inside the context)
    with monkeypatch.context() as m:
        m.setattr(device_store.os, fault, _disk_full)
        with pytest.raises(OSError) as caught:
            _STEPS[step](store)

    # Assert: the disk's error, no temp file left, and the files held before are as they were
    # (the step's earlier removals aside: save_pending withdraws no commit point here)
    assert caught.value.errno == errno.ENOSPC
    after = _files(tmp_path)
    assert not [name for name in after if name.endswith(".tmp")]
    assert {k: v for k, v in after.items() if k in before} == before


def test_repeated_failures_in_one_process_do_not_pile_up_and_a_later_write_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    store = DeviceStore(tmp_path)
    writes = 0

    def short_then_full(fd: int, data: Any) -> int:
        # A part written, then ENOSPC: the temp file holds bytes when the write fails.
        nonlocal writes
        writes += 1
        if writes % 2:
            return real_write(fd, bytes(data)[:3])
        return _disk_full()

    real_write = os.write

    # Execute: records of eight rounds fail in turn while the disk is full
    with monkeypatch.context() as m:
        m.setattr(device_store.os, "write", short_then_full)
        for r in range(1, 9):
            with pytest.raises(OSError):
                store.save_accepted(AcceptedUpload(r, b"frame-%d" % r, SPEC, 7))
    store.save_accepted(AcceptedUpload(10, b"frame-10", SPEC, 7))

    # Assert: nothing but the record written once there was room
    assert sorted(os.listdir(tmp_path)) == ["accepted-10.frame", "accepted-10.json"]
    record = store.load_accepted(10)
    assert record is not None and record.frame == b"frame-10"
