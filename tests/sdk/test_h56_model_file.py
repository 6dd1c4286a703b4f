"""The held model (model.f32 with its version and digest in state.json): a save a crash cut
between its two writes must not pair the new parameters with the old version."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from sdk.device_store import DeviceStore

from .test_review_device_state import _Crash, _crash_on


def _params(value: float, size: int = 12) -> np.ndarray:
    return np.full(size, value, np.float32)


def _digest(params: np.ndarray) -> str:
    return hashlib.sha256(params.astype("<f4").tobytes()).hexdigest()


def test_a_model_save_cut_before_its_state_is_not_held_under_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: version 1 held; the save of version 2 dies after model.f32, before state.json
    store = DeviceStore(tmp_path)
    store.save_model(7, _params(1.0), 1, _digest(_params(1.0)), True)
    _crash_on(monkeypatch, "state.json")
    with pytest.raises(_Crash):
        store.save_model(7, _params(2.0), 2, _digest(_params(2.0)), True)
    monkeypatch.undo()

    # Execute: restart
    held = DeviceStore(tmp_path).load_model(7, 12)

    # Assert: version 2's parameters are never taken for version 1 (a delta chain from
    # version 1 would be applied to them): no model is held, and the next download is whole
    assert held is None or (held[1] == 1 and np.array_equal(held[0], _params(1.0)))


def test_a_model_whose_bytes_match_its_digest_loads(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    store.save_model(7, _params(3.0), 4, _digest(_params(3.0)), False)

    held = DeviceStore(tmp_path).load_model(7, 12)

    assert held is not None
    np.testing.assert_array_equal(held[0], _params(3.0))
    assert held[1:] == (4, False)


def test_a_state_without_a_digest_still_loads_its_model(tmp_path: Path) -> None:
    # An app directory whose state names no digest (nothing to check against) keeps its model
    store = DeviceStore(tmp_path)
    store.save_model(7, _params(3.0), 4, _digest(_params(3.0)), True)
    state = store.state()
    del state["model_digest"]
    (tmp_path / "state.json").write_text(__import__("json").dumps(state))

    held = DeviceStore(tmp_path).load_model(7, 12)

    assert held is not None and held[1] == 4
