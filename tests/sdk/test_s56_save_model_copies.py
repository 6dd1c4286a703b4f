"""DeviceStore.save_model writes the model from the array's memory (stop 56).

It wrote `params.astype("<f4").tobytes()`: two full copies of the model (astype copies even
when the dtype is already little-endian float32, and tobytes copies again) to write one file,
on the devices where memory is scarcest. Measured with tracemalloc, which numpy reports its
buffers to: the peak allocation while saving a 4 MiB model is now far below one copy.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from sdk.device_store import DeviceStore

N = 1 << 20  # 4 MiB of float32


def _digest(params: np.ndarray) -> str:
    return hashlib.sha256(params.astype("<f4").tobytes()).hexdigest()


def _peak_while_saving(store: DeviceStore, params: np.ndarray, digest: str) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        store.save_model(1, params, 3, digest, True)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_float32_model_is_written_without_a_copy(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "app")
    params = np.random.default_rng(0).standard_normal(N, dtype=np.float32)
    peak = _peak_while_saving(store, params, _digest(params))
    assert peak < params.nbytes // 4, peak  # was about 2 x nbytes
    held = store.load_model(1, N)  # read back and checked against its digest
    assert held is not None
    np.testing.assert_array_equal(held[0], params)


@pytest.mark.parametrize("dtype", [">f4", "<f8"])
def test_another_dtype_is_written_as_little_endian_float32(tmp_path: Path, dtype: str) -> None:
    store = DeviceStore(tmp_path / "app")
    params = np.arange(1000, dtype=dtype) / 7
    store.save_model(1, params, 3, _digest(params), True)
    held = store.load_model(1, params.size)
    assert held is not None
    np.testing.assert_array_equal(held[0], params.astype("<f4"))
