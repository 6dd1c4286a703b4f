"""The app directory (helper-63): the recency of a claimed older-SDK residual, write sequence
numbers a hostile or corrupt trailer pushes to the top of their range, an app directory path
naming a regular file, and a symlinked device key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdk.device_store as device_store
from sdk.device_store import (
    MAX_RESIDUALS,
    AcceptedUpload,
    DeviceStore,
    DeviceStoreError,
    PendingUpload,
)

from .test_h51_task_residuals import _frame
from .test_review_device_state import SPEC, _ef


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("residual-*.bin"))


def _value(store: DeviceStore, task: int) -> float | None:
    held = store.load_residual(SPEC.size, task)
    return None if held is None else float(held.residual[0])


def _seqs(root: Path) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in _names(root):
        found = device_store._trailer(root / name)
        out[name] = None if found is None else found[1]
    return out


# -- 1. a claimed older-SDK residual counts as written at its claim ---------------------------


def test_a_claimed_legacy_residual_is_not_dropped_before_older_ones(tmp_path: Path) -> None:
    # Prepare: tasks 1..7 written; an older SDK's residual.bin (2.5); task 9 claims it (it has
    # no trailer until task 9 writes again)
    store = DeviceStore(tmp_path)
    for t in range(1, MAX_RESIDUALS):
        store.save_residual(_ef(float(t)), t)
    (tmp_path / "residual.bin").write_bytes(_ef(2.5).to_bytes())
    store = DeviceStore(tmp_path)
    assert _value(store, 9) == 2.5  # claimed: now residual-9.bin
    assert len(_names(tmp_path)) == MAX_RESIDUALS

    # Execute: another task writes before task 9 writes again (two tasks interleaving)
    store.save_residual(_ef(10.0), 10)

    # Assert: task 1 (least recently written) goes, not the residual task 9 just claimed
    assert "residual-1.bin" not in _names(tmp_path)
    assert _value(store, 9) == 2.5
    # and after a restart the order still holds: the next write drops task 2
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(11.0), 11)
    assert "residual-2.bin" not in _names(tmp_path)
    assert _value(store, 9) == 2.5


def test_writes_after_a_claim_get_higher_sequence_numbers_than_the_claim(tmp_path: Path) -> None:
    # Prepare: the claim is the only residual; then tasks 1..8 in turn
    (tmp_path / "residual.bin").write_bytes(_ef(2.5).to_bytes())
    store = DeviceStore(tmp_path)
    assert _value(store, 9) == 2.5

    # Execute: eight more tasks: one past the bound
    for t in range(1, MAX_RESIDUALS + 1):
        store.save_residual(_ef(float(t)), t)

    # Assert: the claim (the oldest write) is what goes
    assert _names(tmp_path) == sorted(f"residual-{t}.bin" for t in range(1, MAX_RESIDUALS + 1))


# -- 2. sequence numbers at the top of their range -------------------------------------------


def _hostile(root: Path, task: int, value: float, seq: int) -> None:
    """A residual of `task` whose trailer names write sequence number `seq`."""
    raw = (
        _ef(value).to_bytes() + b"PLUMTSEQ" + task.to_bytes(8, "little") + seq.to_bytes(8, "little")
    )
    (root / f"residual-{task}.bin").write_bytes(raw)


@pytest.mark.parametrize("seq", [2**64 - 1, 2**63, 2**63 - 1, 2**63 - 2])
def test_a_huge_sequence_number_does_not_make_later_writes_tie(tmp_path: Path, seq: int) -> None:
    # Prepare: task 1's residual names a sequence number at (or near) the top of the range
    _hostile(tmp_path, 1, 1.0, seq)
    store = DeviceStore(tmp_path)

    # Execute: tasks written in an order unlike their names' (9, 8, ..., 2), then 10 and 11
    for t in range(9, 1, -1):
        store.save_residual(_ef(float(t)), t)
    after_nine = _names(tmp_path)
    store.save_residual(_ef(10.0), 10)
    store.save_residual(_ef(11.0), 11)

    # Assert: every sequence number written is distinct and below 2^63; the bound drops in
    # write order (task 9 written first of this SDK's, then 8), never by name
    seqs = _seqs(tmp_path)
    numbers = [s for s in seqs.values() if s is not None]
    assert len(set(numbers)) == len(numbers) and max(numbers) < 2**63
    assert len(after_nine) == MAX_RESIDUALS
    assert _names(tmp_path) == sorted(f"residual-{t}.bin" for t in [2, 3, 4, 5, 6, 7, 10, 11])
    for t in [2, 3, 4, 5, 6, 7, 10, 11]:
        assert _value(store, t) == float(t)


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    start=st.sampled_from([0, 5, 2**62, 2**63 - 3, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]),
    steps=st.lists(st.integers(1, 11), min_size=1, max_size=12),
)
def test_the_kept_residuals_are_the_last_written_whatever_sequence_a_file_starts_with(
    tmp_path_factory: pytest.TempPathFactory, start: int, steps: list[int]
) -> None:
    # Prepare: task 12's residual with a trailer naming `start`
    root = tmp_path_factory.mktemp("seq")
    _hostile(root, 12, 12.0, start)
    store = DeviceStore(root)
    order = [12]

    # Execute
    for i, task in enumerate(steps):
        store.save_residual(_ef(float(i)), task)
        order = [t for t in order if t != task] + [task]

    # Assert: the last MAX_RESIDUALS tasks written are held (task 12 counts as written first,
    # unless its number was too large to be one: then it counts as older than any)
    kept = order[-MAX_RESIDUALS:]
    if len(set(steps)) >= MAX_RESIDUALS:
        assert _names(root) == sorted(f"residual-{t}.bin" for t in kept)
    numbers = [s for s in _seqs(root).values() if s is not None]
    assert max(numbers) < 2**64


# -- 6. the app directory path and the device key --------------------------------------------


def test_an_app_directory_path_naming_a_regular_file_is_a_store_error(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "app"
    path.write_bytes(b"not a directory")

    # Execute / Assert: the store's error, naming the path; the file untouched
    with pytest.raises(DeviceStoreError, match="app"):
        DeviceStore(path)
    with pytest.raises(DeviceStoreError, match="app"):
        DeviceStore(path / "inner")
    assert path.read_bytes() == b"not a directory"


def test_a_symlinked_device_key_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    # Prepare: device_key is a symlink to a 32-byte file outside, readable by others
    outside = tmp_path / "outside"
    outside.write_bytes(b"k" * 32)
    os.chmod(outside, 0o644)
    app = tmp_path / "app"
    store = DeviceStore(app)
    (app / "device_key").symlink_to(outside)

    # Execute / Assert: refused, naming the key; the target's mode is unchanged
    with pytest.raises(DeviceStoreError, match="device_key"):
        store.private_key()
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o644


def test_a_regular_device_key_is_still_read_and_narrowed(tmp_path: Path) -> None:
    # Prepare
    store = DeviceStore(tmp_path)
    key = store.private_key()
    os.chmod(tmp_path / "device_key", 0o644)

    # Execute
    again = DeviceStore(tmp_path).private_key()

    # Assert
    assert again == key
    assert stat.S_IMODE(os.stat(tmp_path / "device_key").st_mode) == 0o600


# -- a foreign directory where a refusal or a return must write ------------------------------


def test_a_refusal_into_a_residual_that_is_a_directory_is_an_error_not_a_loss(
    tmp_path: Path,
) -> None:
    # Prepare: task 1's upload pending; a foreign directory where task 1's residual lives
    store = DeviceStore(tmp_path)
    store.save_pending(PendingUpload(6, "k" * 32, _frame(6), 144, SPEC, 1), _ef(1.0))
    os.unlink(tmp_path / "residual-1.bin")
    (tmp_path / "residual-1.bin").mkdir()
    sent = np.full(SPEC.size, 2.0, np.float32)

    # Execute / Assert: the store's error naming it (the refusal dropped the upload as another
    # model's, its content lost), and the upload still pending
    with pytest.raises(DeviceStoreError, match="residual-1.bin"):
        store.refuse_pending(sent, SPEC.size, "k" * 32)
    held = store.load_pending()
    assert held is not None and held.key == "k" * 32

    # and once the directory is gone, the refusal goes through
    (tmp_path / "residual-1.bin").rmdir()
    ef = store.refuse_pending(sent, SPEC.size, "k" * 32)
    assert ef is not None and float(ef.residual[0]) == 2.0


def test_a_return_into_a_residual_that_is_a_directory_is_an_error_not_a_loss(
    tmp_path: Path,
) -> None:
    # Prepare: a record of task 1; a foreign directory where task 1's residual lives
    store = DeviceStore(tmp_path)
    store.save_accepted(AcceptedUpload(5, _frame(5), SPEC, 1))
    (tmp_path / "residual-1.bin").mkdir()
    sent = np.full(SPEC.size, 2.0, np.float32)

    # Execute / Assert
    with pytest.raises(DeviceStoreError, match="residual-1.bin"):
        store.return_accepted(5, sent, SPEC.size)
    assert store.load_accepted(5) is not None
