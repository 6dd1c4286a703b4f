"""The bound on task residuals (MAX_RESIDUALS) drops the least recently written one by a write
sequence kept in each residual's trailer, not by file modification time: a clock set back, or a
filesystem with coarse mtimes, must not drop a residual just written. Files an older SDK wrote
(a 16-byte trailer without the sequence) still load, and count as older than any written since.
Claiming the older SDK's residual.bin keeps the bound too, at every write."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdk.device_store as device_store
from sdk.device_store import MAX_RESIDUALS, AcceptedUpload, DeviceStore, PendingUpload

from .test_h51_task_residuals import _frame
from .test_review_device_state import SPEC, _Crash, _crash_on, _ef

# A time long before any file here was written: what a clock set back stamps.
PAST_NS = 10**9


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("residual-*.bin"))


def _value(store: DeviceStore, task: int) -> float | None:
    held = store.load_residual(SPEC.size, task)
    return None if held is None else float(held.residual[0])


def _old_format(root: Path, task: int, value: float, mtime_ns: int) -> None:
    """A residual as the SDK before the write sequence wrote it: the 16-byte task trailer."""
    path = root / f"residual-{task}.bin"
    path.write_bytes(_ef(value).to_bytes() + b"PLUMTASK" + task.to_bytes(8, "little"))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_residual_stamped_in_the_past_by_a_clock_set_back_is_not_dropped(
    tmp_path: Path,
) -> None:
    # Prepare: tasks 1..8 written in order; task 1 written again last, while the clock reads
    # a time long past (its mtime is older than every other file's)
    store = DeviceStore(tmp_path)
    for t in range(1, MAX_RESIDUALS + 1):
        store.save_residual(_ef(float(t)), t)
    store.save_residual(_ef(11.0), 1)
    os.utime(tmp_path / "residual-1.bin", ns=(PAST_NS, PAST_NS))

    # Execute: a ninth task
    store.save_residual(_ef(9.0), 9)

    # Assert: task 2, the least recently written, is dropped; task 1 keeps its new residual
    assert "residual-2.bin" not in _names(tmp_path)
    assert len(_names(tmp_path)) == MAX_RESIDUALS
    assert _value(store, 1) == 11.0


def test_equal_mtimes_drop_the_least_recently_written_not_the_lowest_name(
    tmp_path: Path,
) -> None:
    # Prepare: a filesystem whose mtimes are coarse: every file has the same one
    store = DeviceStore(tmp_path)
    for t in [3, 1, 2, 4, 5, 6, 7, 8]:
        store.save_residual(_ef(float(t)), t)
    for name in _names(tmp_path):
        os.utime(tmp_path / name, ns=(PAST_NS, PAST_NS))

    # Execute
    store.save_residual(_ef(9.0), 9)

    # Assert: task 3 (written first) goes, not task 1 (the lowest name)
    assert "residual-3.bin" not in _names(tmp_path)
    assert _value(store, 1) == 1.0


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(st.integers(1, 11), st.integers(0, 3)),  # (task, mtime stamp: any order)
        min_size=1,
        max_size=14,
    )
)
def test_the_kept_residuals_are_the_most_recently_written_whatever_the_mtimes(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[int, int]]
) -> None:
    # Prepare: a fresh directory; the model of the bound: the last MAX_RESIDUALS distinct
    # tasks written
    root = tmp_path_factory.mktemp("order")
    store = DeviceStore(root)
    order: list[int] = []

    # Execute: writes, each file then stamped with an arbitrary mtime (a wandering clock)
    for i, (task, stamp) in enumerate(steps):
        store.save_residual(_ef(float(i)), task)
        order = [t for t in order if t != task] + [task]
        os.utime(root / f"residual-{task}.bin", ns=(PAST_NS * (1 + stamp),) * 2)

    # Assert: exactly the last MAX_RESIDUALS tasks written are held, each with its last value
    kept = order[-MAX_RESIDUALS:]
    assert _names(root) == sorted(f"residual-{t}.bin" for t in kept)
    for i, (task, _) in enumerate(steps):
        if task in kept and all(t != task for t, _ in steps[i + 1 :]):
            assert _value(store, task) == float(i)


def test_residuals_an_older_sdk_wrote_load_and_go_first_oldest_mtime_first(
    tmp_path: Path,
) -> None:
    # Prepare: tasks 1..4 in the older layout (16-byte trailer, recency only by mtime: task 4
    # oldest), then tasks 5..8 written by this SDK, their mtimes older still
    for task, mtime in [(1, 4), (2, 3), (3, 2), (4, 1)]:
        _old_format(tmp_path, task, float(task), mtime * 10**12)
    store = DeviceStore(tmp_path)
    for t in range(5, MAX_RESIDUALS + 1):
        store.save_residual(_ef(float(t)), t)
        os.utime(tmp_path / f"residual-{t}.bin", ns=(PAST_NS, PAST_NS))

    # Execute: two more tasks
    store.save_residual(_ef(9.0), 9)
    store.save_residual(_ef(10.0), 10)

    # Assert: the older SDK's files go first, oldest mtime first (4, then 3); the rest load
    names = _names(tmp_path)
    assert "residual-4.bin" not in names and "residual-3.bin" not in names
    assert len(names) == MAX_RESIDUALS
    for t in [1, 2, 5, 6, 7, 8, 9, 10]:
        assert _value(store, t) == float(t)
    assert device_store._residual_task(tmp_path / "residual-1.bin") == 1


def test_a_residual_rewritten_from_the_older_layout_counts_as_recent(tmp_path: Path) -> None:
    # Prepare: task 1 in the older layout, then written again (a round) with an old mtime
    _old_format(tmp_path, 1, 1.0, 10**12)
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(2.0), 2)
    store.save_residual(_ef(1.5), 1)
    os.utime(tmp_path / "residual-1.bin", ns=(PAST_NS, PAST_NS))

    # Execute: fill past the bound by one
    for t in range(3, MAX_RESIDUALS + 2):
        store.save_residual(_ef(float(t)), t)

    # Assert: task 2 (written before task 1's rewrite) goes, task 1 stays
    assert "residual-2.bin" not in _names(tmp_path)
    assert _value(store, 1) == 1.5


def test_the_sequence_survives_windows_and_refusals(tmp_path: Path) -> None:
    # Prepare: tasks 1..8; task 1's upload is pending, then refused (its residual is written
    # by the refusal's rename, through a staged file); mtimes all in the past
    store = DeviceStore(tmp_path)
    for t in range(1, MAX_RESIDUALS + 1):
        store.save_residual(_ef(float(t)), t)
    store.save_pending(PendingUpload(6, "k" * 32, _frame(6), 144, SPEC, 1), _ef(1.0))
    store.refuse_pending(np.full(SPEC.size, 2.0, np.float32), SPEC.size, "k" * 32)
    for name in _names(tmp_path):
        os.utime(tmp_path / name, ns=(PAST_NS, PAST_NS))

    # Execute
    store.save_residual(_ef(9.0), 9)

    # Assert: task 2 goes; task 1 holds its residual plus the refused content
    assert "residual-2.bin" not in _names(tmp_path)
    assert _value(store, 1) == 3.0


def test_a_directory_named_like_a_residual_does_not_stop_saves(tmp_path: Path) -> None:
    # Prepare: a foreign directory in the residuals' name space, older than everything
    store = DeviceStore(tmp_path)
    (tmp_path / "residual-77.bin").mkdir()
    for t in range(1, MAX_RESIDUALS + 1):
        store.save_residual(_ef(float(t)), t)

    # Execute: past the bound
    store.save_residual(_ef(9.0), 9)

    # Assert: saved; a task residual was dropped, the directory left alone
    assert _value(store, 9) == 9.0
    assert (tmp_path / "residual-77.bin").is_dir()
    assert len([n for n in _names(tmp_path) if n != "residual-77.bin"]) == MAX_RESIDUALS


# -- claiming the older SDK's residual keeps the bound -----------------------------------------


def _eight_and_legacy(root: Path) -> DeviceStore:
    """Tasks 1..8 (task 1 least recently written), and an older SDK's residual.bin (2.5)."""
    store = DeviceStore(root)
    for t in range(1, MAX_RESIDUALS + 1):
        store.save_residual(_ef(float(t)), t)
    (root / "residual.bin").write_bytes(_ef(2.5).to_bytes())
    return DeviceStore(root)


def test_a_claim_with_eight_residuals_held_keeps_the_bound(tmp_path: Path) -> None:
    # Prepare
    store = _eight_and_legacy(tmp_path)

    # Execute: a ninth task reads its residual, claiming the older SDK's
    held = store.load_residual(SPEC.size, 9)

    # Assert: it holds the old residual, and the bound holds at once (task 1 dropped)
    assert held is not None and float(held.residual[0]) == 2.5
    assert _names(tmp_path) == sorted(f"residual-{t}.bin" for t in range(2, 10))
    assert not (tmp_path / "residual.bin").exists()


def _spy_writes(monkeypatch: pytest.MonkeyPatch, root: Path, counts: list[int]) -> None:
    """After every write, unlink and rename, append how many task residual files exist."""

    def spy(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            counts.append(len(_names(root)))
            return out

        return call

    monkeypatch.setattr(device_store, "_write", spy(device_store._write))
    monkeypatch.setattr(device_store, "_unlink", spy(device_store._unlink))
    monkeypatch.setattr(os, "replace", spy(os.replace))


def test_a_claim_never_holds_more_than_the_bound_at_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    store = _eight_and_legacy(tmp_path)
    counts: list[int] = []
    _spy_writes(monkeypatch, tmp_path, counts)

    # Execute
    store.load_residual(SPEC.size, 9)
    monkeypatch.undo()

    # Assert: at no point were there more than MAX_RESIDUALS task residuals
    assert counts and max(counts) == MAX_RESIDUALS


@pytest.mark.parametrize(
    ("target", "attr", "name"),
    [
        pytest.param(device_store, "_write", "state.json", id="_write-state.json"),
        pytest.param(device_store, "_unlink", "residual-1.bin", id="_unlink-residual-1.bin"),
        pytest.param(os, "replace", "residual.bin", id="replace-residual.bin"),
    ],
)
def test_a_claim_crashed_anywhere_keeps_the_bound_and_the_old_residual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str
) -> None:
    # Prepare: the claim dies at one write
    _eight_and_legacy(tmp_path)
    _crash_on(monkeypatch, name, target, attr)
    with pytest.raises(_Crash):
        DeviceStore(tmp_path).load_residual(SPEC.size, 9)
    monkeypatch.undo()
    assert len(_names(tmp_path)) <= MAX_RESIDUALS

    # Execute: restart, task 9 asks again
    store = DeviceStore(tmp_path)
    held = store.load_residual(SPEC.size, 9)

    # Assert: task 9 holds the old residual once; tasks 2..8 untouched; the bound holds
    assert held is not None and float(held.residual[0]) == 2.5
    assert _names(tmp_path) == sorted(f"residual-{t}.bin" for t in range(2, 10))
    for t in range(2, MAX_RESIDUALS + 1):
        assert _value(store, t) == float(t)


def test_a_claim_through_a_returned_record_keeps_the_bound_at_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: eight tasks and the legacy residual; a record of task 9 (which holds no
    # residual yet), then its round is abandoned
    store = _eight_and_legacy(tmp_path)
    store.save_accepted(AcceptedUpload(5, _frame(5), SPEC, 9))
    counts: list[int] = []
    _spy_writes(monkeypatch, tmp_path, counts)

    # Execute: the return claims the legacy residual, then adds the record's content
    ef = store.return_accepted(5, np.full(SPEC.size, 1.0, np.float32), SPEC.size)
    monkeypatch.undo()

    # Assert: task 9 holds the old residual plus the content; the bound held throughout
    assert ef is not None and float(ef.residual[0]) == 3.5
    assert counts and max(counts) == MAX_RESIDUALS
    assert _value(DeviceStore(tmp_path), 9) == 3.5


def test_an_eviction_a_crash_cut_is_finished_when_the_directory_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: eight tasks; the ninth's save dies as it drops task 1's residual
    store = DeviceStore(tmp_path)
    for t in range(1, MAX_RESIDUALS + 1):
        store.save_residual(_ef(float(t)), t)
    _crash_on(monkeypatch, "residual-1.bin", device_store, "_unlink")
    with pytest.raises(_Crash):
        store.save_residual(_ef(9.0), 9)
    monkeypatch.undo()
    assert len(_names(tmp_path)) == MAX_RESIDUALS + 1

    # Execute: restart
    store = DeviceStore(tmp_path)

    # Assert: back to the bound before any write, task 1 (least recent) dropped, task 9 kept
    assert _names(tmp_path) == sorted(f"residual-{t}.bin" for t in range(2, 10))
    assert _value(store, 9) == 9.0
