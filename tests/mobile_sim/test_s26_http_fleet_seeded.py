"""The HTTP fleet's simulated devices draw their retry waits from generators seeded by the
run's seed (the SDK's default is os.urandom), and a re-sent report's unknown loss (NaN,
`RoundReport.resent`) is left out of the round's train_loss."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import sdk.client
from mobile_sim.http_fleet import _Fleet
from mobile_sim.runner import SimConfig


class _Stop(Exception):
    pass


def _retry_rngs(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    made: list[Any] = []

    class Recording:
        def __init__(self, url: str, path: str, **kwargs: Any) -> None:
            if len(made) == 3:
                raise _Stop
            made.append(kwargs.get("retry_rng"))

        async def aclose(self) -> None:
            return None

    monkeypatch.setattr(sdk.client, "AsyncClient", Recording)
    cfg = SimConfig(
        dataset="digits", model="digits_mlp", clients=5, per_round=2, rounds=1, seed=seed
    )
    fleet = _Fleet.__new__(_Fleet)
    fleet.cfg, fleet.url, fleet.tmp = cfg, "http://127.0.0.1:9", str(tmp_path)
    with pytest.raises(_Stop):
        asyncio.run(fleet.run(None, None, lambda p: (0.0, 0.0), lambda r: None))
    return made


def test_each_simulated_device_retries_from_a_generator_the_seed_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Execute: the first three devices' generators, twice at seed 3 and once at seed 4
    first = [r.random() for r in _retry_rngs(tmp_path / "a", 3, monkeypatch)]
    again = [r.random() for r in _retry_rngs(tmp_path / "b", 3, monkeypatch)]
    other = [r.random() for r in _retry_rngs(tmp_path / "c", 4, monkeypatch)]
    # Assert: seeded (the same draws again), per device (they differ), per seed
    assert all(isinstance(x, float) for x in first)
    assert first == again and len(set(first)) == 3 and first != other


def test_a_resent_report_is_left_out_of_the_rounds_train_loss() -> None:
    # Prepare: a device whose first round trains (loss 1.5) and whose second is a re-send
    # of an update an earlier call trained (RoundReport.resent, loss NaN)
    import numpy as np

    from mobile_sim.http_fleet import HttpFleetOptions, _Occupancy

    def report(round_id: int, loss: float, resent: bool) -> Any:
        return SimpleNamespace(loss=loss, resent=resent, round_id=round_id)

    class Device:
        def __init__(self, fleet: _Fleet) -> None:
            self.fleet = fleet
            self.reports = [report(1, 1.5, False), report(2, math.nan, True)]

        async def check_in(self, task_id: int) -> Any:
            r = self.reports[0]
            return SimpleNamespace(
                action="train", retry_after_s=0.0,
                assignment=SimpleNamespace(round_id=r.round_id, deadline_unix=0.0),
            )  # fmt: skip

        async def train_round(self, a: Any, trainer: Any, x: Any, y: Any) -> Any:
            r = self.reports.pop(0)
            if not self.reports:
                self.fleet.done.set()
            return r

    fleet = _Fleet.__new__(_Fleet)
    fleet.cfg = SimConfig(dataset="digits", model="digits_mlp", clients=1, per_round=1, rounds=2)
    fleet.data = SimpleNamespace(x_train=np.zeros((4, 2)), y_train=np.zeros(4))
    fleet.parts = [np.arange(4)]
    fleet.opts = HttpFleetOptions()
    fleet.occupancy = _Occupancy(1)
    fleet.failures, fleet.losses, fleet.task_id = {}, {}, 1
    fleet.done = asyncio.Event()

    # Execute
    asyncio.run(fleet._device(0, Device(fleet), None))

    # Assert: round 1's loss kept; round 2 has no known loss (not a NaN that makes its mean NaN)
    assert fleet.losses == {1: [1.5]}
