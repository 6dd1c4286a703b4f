"""`participate(model, x, y)` with the torch module itself instead of `TorchTrainer(model)` (an
easy slip: the README builds both on one line) checked in, took a round slot, downloaded the
model, and only then failed with `TypeError: Module.train() got an unexpected keyword argument
'epochs'`. A trainer whose `train` cannot take the SDK's call is now a `TypeError` naming what
to pass, before any request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from torch import nn

from sdk import Client, TrainResult

X, Y = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)


class _Recorder:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 30.0})


class _OldStyle:
    def train(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> TrainResult:
        raise AssertionError("never called")


class _Fine:
    def train(self, params: Any, x: Any, y: Any, **settings: Any) -> TrainResult:
        raise AssertionError("never called: no round is assigned")


@pytest.mark.parametrize(
    ("trainer", "named"),
    [
        (
            nn.Linear(3, 2),
            r"got torch\.nn\.modules\.linear\.Linear; wrap a torch module: TorchTrainer\(module\)$",
        ),
        (object(), r"got builtins\.object"),
        (_OldStyle(), r"got .*_OldStyle"),
    ],
)
def test_a_trainer_that_cannot_train_is_refused_before_any_request(
    tmp_path: Path, trainer: Any, named: str
) -> None:
    # Prepare
    seen = _Recorder()
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(seen)) as client:
        # Execute / Assert
        with pytest.raises(TypeError, match=r"trainer must be a LocalTrainer.*" + named):
            client.participate(trainer, X, Y, max_wait_s=1.0)
    assert seen.paths == []  # no check-in, no round slot taken


def test_a_duck_typed_trainer_is_accepted(tmp_path: Path) -> None:
    seen = _Recorder()
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(seen)) as client:
        assert client.participate(_Fine(), X, Y, max_wait_s=1.0) is None
    assert seen.paths == ["/v1/checkin"]
