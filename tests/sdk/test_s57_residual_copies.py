"""DeviceStore writes a residual from the residual's own memory (stop 57).

It wrote `ErrorFeedback.to_bytes() + trailer`: `to_bytes` copied the values (`tobytes`) and
joined them to the header (a second copy), and the trailer's `+` made a third, to write one
file the size of the model, on the devices where memory is scarcest. Measured with
tracemalloc, which numpy reports its buffers to: the peak allocation while saving a 4 MiB
residual is now far below one copy. The bytes on disk are unchanged (`to_bytes` + trailer).
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from compression import ErrorFeedback, ModelSpec
from sdk import device_store
from sdk.device_store import DeviceStore, DeviceStoreError, PendingUpload

N = 1 << 20  # 4 MiB of float32
SPEC = ModelSpec.from_shapes([("w", (N,))])


def _ef(seed: int = 0) -> ErrorFeedback:
    ef = ErrorFeedback(N)
    ef.residual = np.random.default_rng(seed).standard_normal(N, dtype=np.float32)
    return ef


def _peak(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("task_id", [None, 7])
def test_a_residual_is_written_without_a_copy(tmp_path: Path, task_id: int | None) -> None:
    store = DeviceStore(tmp_path / "app")
    ef = _ef()
    store.save_residual(_ef(1), task_id, SPEC)  # the first save's one-off set-up is not counted
    peak = _peak(lambda: store.save_residual(ef, task_id, SPEC))
    assert peak < ef.residual.nbytes // 4, peak  # was about 2 x nbytes
    back = store.load_residual(N, task_id)
    assert back is not None
    np.testing.assert_array_equal(back.residual, ef.residual)


def test_the_file_holds_to_bytes_then_the_trailer(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "app")
    ef = _ef()
    store.save_residual(ef, None)
    assert store._dest(None).read_bytes() == ef.to_bytes()  # the legacy residual: no trailer
    store.save_residual(ef, 3, SPEC)
    raw = store._dest(3).read_bytes()
    assert raw[: 16 + 4 * N] == ef.to_bytes()
    assert len(raw) > 16 + 4 * N  # and the trailer naming the task


def test_to_parts_is_to_bytes_in_two_parts_for_any_byte_order() -> None:
    ef = ErrorFeedback(5)
    ef.residual = np.arange(5, dtype=np.float32) / 3
    header, body = ef.to_parts()
    assert header + bytes(body) == ef.to_bytes()
    assert len(header) == 16
    assert bytes(body) == ef.residual.astype("<f4").tobytes()
    # The view is of the residual's memory, not a copy.
    assert np.shares_memory(np.frombuffer(body, dtype="<f4"), ef.residual)
    back = ErrorFeedback.from_bytes(ef.to_bytes(), 5)
    np.testing.assert_array_equal(back.residual, ef.residual)


def test_a_pending_upload_writes_its_residual_without_a_copy(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "app")
    ef = _ef(2)

    def save() -> None:
        store.save_pending(PendingUpload(4, "k1", b"frame", spec=SPEC, task_id=9), ef)

    save()
    # Two residual files are written (pending.residual and the task's), each from the
    # residual's memory; before, each took two copies.
    assert _peak(save) < ef.residual.nbytes // 4
    # pending.residual is renamed over the task's file once pending.json is written.
    assert store._dest(9).read_bytes()[: 16 + 4 * N] == ef.to_bytes()
    back = store.load_residual(N, 9, SPEC)
    assert back is not None
    np.testing.assert_array_equal(back.residual, ef.residual)


class _Shrunk:
    """An `os.stat_result` whose `st_size` is smaller than the file's: the file grown after
    `_read`'s fstat."""

    def __init__(self, real: os.stat_result, size: int) -> None:
        self._real, self.st_size = real, size

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


@pytest.mark.parametrize(
    ("grown_to", "refused"), [(100, False), (device_store._MAX_JSON_BYTES + 5, True)]
)
def test_a_json_file_grown_after_its_size_was_read_is_read_on_to_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grown_to: int, refused: bool
) -> None:
    path = tmp_path / "state.json"
    body = b'{"a": "' + b"x" * (grown_to - 10) + b'"}'
    path.write_bytes(body)
    real_fstat = os.fstat
    monkeypatch.setattr(device_store.os, "fstat", lambda fd: _Shrunk(real_fstat(fd), 10))
    if refused:
        with pytest.raises(DeviceStoreError, match="over the"):
            device_store._read(path, device_store._MAX_JSON_BYTES, "state")
    else:
        assert device_store._read(path, device_store._MAX_JSON_BYTES, "state") == body


def test_a_small_json_read_allocates_no_more_than_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"a": 1}')
    peak = _peak(lambda: device_store._read_json(path, "state"))
    assert peak < 64 * 1024, peak  # was the 1 MiB cap
