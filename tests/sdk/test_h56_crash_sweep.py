"""A sweep of crashes over steps that fill the bound on task residuals: a claim of the older
SDK's residual with 8 task residuals held, refusals, secure saves and returns of tasks that hold
none (each dropping the least recently written), crashed at every write, each. After the crash
the app is reopened and the step that died is run again, then the rest: the residuals held must
be those of the run without a crash, value for value, and never more than MAX_RESIDUALS once the
directory is open."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sdk.device_store as device_store
from sdk.device_store import MAX_RESIDUALS, AcceptedUpload, DeviceStore, PendingUpload

from .test_h51_task_residuals import _frame
from .test_review_device_state import SPEC, _Crash, _ef


def _setup(root: Path) -> None:
    """Tasks 1..8 hold residuals 1.0..8.0; the older SDK's residual.bin holds 0.25; records of
    round 20 (task 9, which holds no residual) and round 21 (task 3)."""
    store = DeviceStore(root)
    (root / "residual.bin").write_bytes(_ef(0.25).to_bytes())
    for t in range(1, 9):
        store.save_residual(_ef(float(t)), t)
    store.save_accepted(AcceptedUpload(20, _frame(20), SPEC, 9))
    store.save_accepted(AcceptedUpload(21, _frame(21), SPEC, 3))


def _full(value: float) -> np.ndarray:
    return np.full(SPEC.size, value, np.float32)


def _accept_held(store: DeviceStore) -> None:
    pending = store.load_pending()
    if pending is not None:  # a crash after the acceptance committed leaves none
        store.accept_pending(pending)


STEPS: list[Callable[[DeviceStore], Any]] = [
    # task 9 claims residual.bin (0.25), adds 100: task 1's residual makes room
    lambda s: s.return_accepted(20, _full(100.0), SPEC.size),
    lambda s: s.save_pending(PendingUpload(30, "a" * 32, _frame(30), 1, SPEC, 10), _ef(10.0)),
    lambda s: s.refuse_pending(_full(1000.0), SPEC.size, "a" * 32),
    lambda s: s.save_accepted(AcceptedUpload(31, _frame(31), SPEC, 11), _ef(11.0)),
    lambda s: s.return_accepted(21, _full(7.0), SPEC.size),
    lambda s: s.save_pending(PendingUpload(32, "b" * 32, _frame(32), 1, SPEC, 4), _ef(44.0)),
    _accept_held,
    lambda s: s.save_residual(_ef(12.0), 12),
]


@contextmanager
def _crashing(at: int) -> Iterator[list[int]]:
    """Every write, unlink and rename counts one; the one numbered `at` raises `_Crash`."""
    seen = [0]
    saved = []
    for target, attr in [(device_store, "_write"), (device_store, "_unlink"), (os, "replace")]:
        real = getattr(target, attr)

        def io(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            seen[0] += 1
            if seen[0] - 1 == at:
                raise _Crash()
            return _real(*args, **kwargs)

        saved.append((target, attr, real))
        setattr(target, attr, io)
    try:
        yield seen
    finally:
        for target, attr, real in reversed(saved):
            setattr(target, attr, real)


def _run(root: Path, at: int) -> int:
    """The steps, crashing at write `at`; after a crash, reopen and go on from the step that
    died (every step is safe to run again). Returns the writes counted."""
    died = None
    with _crashing(at) as seen:
        for i, step in enumerate(STEPS):
            try:
                step(DeviceStore(root))
            except _Crash:
                died = i
                break
    if died is None:
        return seen[0]
    assert len(list(root.glob("residual-*.bin"))) <= MAX_RESIDUALS + 1
    assert len(list(DeviceStore(root).root.glob("residual-*.bin"))) <= MAX_RESIDUALS
    for step in STEPS[died:]:
        step(DeviceStore(root))
    return seen[0]


def _held(root: Path) -> dict[int, float]:
    store = DeviceStore(root)
    held = {}
    for path in root.glob("residual-*.bin"):
        task = int(path.name[len("residual-") : -len(".bin")])
        ef = store.load_residual(SPEC.size, task)
        assert ef is not None, path.name
        held[task] = float(ef.residual[0])
    return held


# Writes of the steps above without a crash (checked below, so a new write is swept too).
WRITES = 64
WANT = {3: 7.0, 4: 44.0, 7: 7.0, 8: 8.0, 9: 100.25, 10: 1010.0, 11: 11.0, 12: 12.0}


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    # Crashes are simulated in-process: durability is not what is checked, and fsync is slow.
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def test_without_a_crash_the_steps_make_these_writes_and_residuals(tmp_path: Path) -> None:
    _setup(tmp_path)
    assert _run(tmp_path, -1) == WRITES
    assert _held(tmp_path) == WANT


@pytest.mark.parametrize("at", range(WRITES))
def test_a_crash_at_any_write_ends_with_the_same_residuals(tmp_path: Path, at: int) -> None:
    # Prepare
    _setup(tmp_path)

    # Execute: crash at write `at`, reopen, run the rest
    _run(tmp_path, at)

    # Assert: the residuals of the run without a crash, and no more than the bound
    assert _held(tmp_path) == WANT
    assert len(list(tmp_path.glob("residual-*.bin"))) <= MAX_RESIDUALS
