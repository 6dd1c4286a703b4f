"""SHA-256 passes over the model's parameters in one round of `participate`, device side.

A round hashed the downloaded parameters twice over the same bytes: once to check the download
against the coordinator's digest (`_Core.apply_model`, `model_digest`), and once more right
after, before training, as the "before" of the check that the trainer did not write into the
array it was given (`_train`, `_buffer_digest`). The download's digest now serves both (the
bytes are the same; on a little-endian machine the model's canonical bytes are its memory).
A delta-chain round also read and hashed the held model twice: once to ask from its version
(`model_exchange`) and again to apply the chain to it (`apply_model`); the exchange now carries
the model it read. So a snapshot round makes 3 passes (the snapshot's own header check, the
download's check, the trainer check's "after") instead of 4, and a delta-chain round 3 (the
held model's check, the download's, the "after") instead of 5. Counted by wrapping `hashlib` in
the modules that hash, keeping calls over a buffer of the model's size made from the device's
code (the loopback coordinator in the same process hashes the model too). A trainer that writes
into the array is still caught (`test_a_write_through_is_still_caught`).
"""

from __future__ import annotations

import hashlib
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

import compression._snapshot
import sdk.client
import sdk.device_store
from sdk import Client, TrainResult
from tests.coordinator.test_service_support import (
    SPEC,
    SoftmaxTrainer,
    create_task,
    local_data,
    loopback_url,  # noqa: F401  (the fixture `url`)
    task_config,
)

_CLIENT_FILE = sdk.client.__file__


def _from_the_device() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == _CLIENT_FILE:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


@pytest.fixture()
def passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []

    def counting(module: str) -> types.SimpleNamespace:
        def sha256(data: Any = b"") -> Any:
            if memoryview(data).nbytes == 4 * SPEC.size and _from_the_device():
                seen.append(f"{module}:{sys._getframe(1).f_code.co_name}")
            return hashlib.sha256(data)

        return types.SimpleNamespace(sha256=sha256)

    for module in (compression._snapshot, sdk.client, sdk.device_store):
        monkeypatch.setattr(module, "hashlib", counting(module.__name__))
    return seen


def test_one_pass_serves_the_download_check_and_the_trainer_check(
    url: str, tmp_path: Path, passes: list[str]
) -> None:
    task_id = create_task(url, task_config(rounds=2, clients_per_round=1))
    counts = []
    with Client(url, tmp_path / "app") as client:
        client.register()
        for _ in range(2):
            passes.clear()
            report = client.participate(SoftmaxTrainer(), *local_data(1), task_id=task_id)
            assert report is not None
            counts.append((report.download_encoding, sorted(passes)))
    assert counts[0][0] == "snapshot" and counts[1][0] == "delta-chain"
    assert len(counts[0][1]) == 3, counts[0]
    assert len(counts[1][1]) == 3, counts[1]


class _WritesThrough:
    """Updates the array it was given in place through torch (numpy's read-only flag does not
    stop that) and returns it."""

    def train(self, params: npt.NDArray[np.float32], x: Any, y: Any, **_: Any) -> TrainResult:
        # torch warns of a read-only array once a process (TORCH_WARN_ONCE): another test in
        # the same worker may have had the warning, so it is silenced here, not expected.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            view = torch.from_numpy(params)
        view -= 0.1
        return TrainResult(params.copy(), len(x), 0.5)


def test_a_write_through_is_still_caught(url: str, tmp_path: Path) -> None:
    # docs/devices.md: "A write numpy's flag does not stop (through torch.from_numpy(params)) is
    # found when train returns, with the same error; nothing is encoded or sent"
    task_id = create_task(url, task_config(rounds=2, clients_per_round=1))
    with Client(url, tmp_path / "app") as client:
        client.register()
        with pytest.raises(ValueError, match="wrote into the params array it was given"):
            client.participate(_WritesThrough(), *local_data(1), task_id=task_id)
        assert not (tmp_path / "app" / "pending.json").exists()
