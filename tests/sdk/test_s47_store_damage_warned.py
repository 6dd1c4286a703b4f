"""Stop 47 (helper-405's device-store review): damage the store works around is logged.

A task residual that is torn or fails its CRC-32 is read as no residual (the device keeps
training: the round starts afresh and the file is replaced at its save), and a pending upload
whose frame is missing or fails its SHA-256 counts as delivered. Both were silent: the
error-feedback memory, or the pending update's content, was lost with no word to the app.
Now each logs one WARNING on `plume.sdk` naming the file. A whole residual of another size or
layout is no damage and logs nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from compression import ModelSpec
from sdk.device_store import DeviceStore

from .test_h67_store_layout import OTHER, SMALL, _pending
from .test_review_device_state import SPEC, _ef

DAMAGED = "is damaged (torn, or its values fail their check)"


def _residual_file(root: Path) -> Path:
    (path,) = [p for p in root.iterdir() if p.name.startswith("residual-")]
    return path


@pytest.mark.parametrize("damage", ["torn", "bit"])
def test_a_damaged_residual_is_read_as_none_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    # Prepare: task 1's residual saved, then damaged on disk
    DeviceStore(tmp_path).save_residual(_ef(2.0), 1, SPEC)
    path = _residual_file(tmp_path)
    raw = bytearray(path.read_bytes())
    if damage == "torn":
        del raw[-5:]
    else:
        raw[40] ^= 0x01  # a value bit: its CRC-32 fails
    path.write_bytes(bytes(raw))

    # Execute
    with caplog.at_level(logging.WARNING, logger="plume.sdk"):
        got = DeviceStore(tmp_path).load_residual(SPEC.size, 1, SPEC)

    # Assert: no residual, as before, and one WARNING naming the file and task
    assert got is None
    lines = [r.getMessage() for r in caplog.records if r.name == "plume.sdk"]
    assert len(lines) == 1 and DAMAGED in lines[0] and str(path) in lines[0], lines
    assert "task 1" in lines[0]


@pytest.mark.parametrize("asked", [OTHER, SMALL])
def test_another_layouts_or_sizes_residual_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, asked: ModelSpec
) -> None:
    # Prepare
    DeviceStore(tmp_path).save_residual(_ef(2.0), 1, SPEC)

    # Execute
    with caplog.at_level(logging.WARNING, logger="plume.sdk"):
        got = DeviceStore(tmp_path).load_residual(asked.size, 1, asked)

    # Assert
    assert got is None
    assert not [r for r in caplog.records if r.name == "plume.sdk"]


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_a_pending_uploads_damaged_frame_is_dropped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    # Prepare
    DeviceStore(tmp_path).save_pending(_pending(SPEC), _ef(2.0))
    frame = tmp_path / "pending.frame"
    if damage == "missing":
        frame.unlink()
    else:
        raw = bytearray(frame.read_bytes())
        raw[-1] ^= 0x01
        frame.write_bytes(bytes(raw))

    # Execute
    with caplog.at_level(logging.WARNING, logger="plume.sdk"):
        got = DeviceStore(tmp_path).load_pending()

    # Assert
    assert got is None
    lines = [r.getMessage() for r in caplog.records if r.name == "plume.sdk"]
    assert len(lines) == 1 and "the upload is dropped" in lines[0], lines
    assert ("missing" if damage == "missing" else "damaged (SHA-256)") in lines[0]


def test_a_whole_pending_upload_and_residual_say_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    DeviceStore(tmp_path).save_pending(_pending(SPEC), _ef(2.0))

    # Execute
    with caplog.at_level(logging.WARNING, logger="plume.sdk"):
        store = DeviceStore(tmp_path)
        pending = store.load_pending()

    # Assert
    assert pending is not None
    assert not [r for r in caplog.records if r.name == "plume.sdk"]
