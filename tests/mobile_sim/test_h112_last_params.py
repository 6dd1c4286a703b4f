"""The simulator keeps the model of its last recorded round (`last_params`, an interrupted
run's `final_params`) by reference, not by a copy each round (6 MB a round for the MNIST CNN).
That is only right if no model the engine publishes is ever changed in place afterwards: the
engine publishes each round's model as a new array (`engine.params + step`), and the backends,
attacks, evaluation and aggregators only read it. These tests watch every array the engine
holds as its model through whole runs and check that none of them changed later."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import mobile_sim.runner as runner
from coordinator.engine import RoundEngine, Strategy

CFG = runner.SimConfig(
    dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=3, local_epochs=1
)


def _watch(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """(array, a copy of it when it was assigned) for every model array the engines hold."""
    held: list[tuple[Any, Any]] = []

    def get(self: RoundEngine) -> Any:
        return self.__dict__["_watched_params"]

    def put(self: RoundEngine, value: Any) -> None:
        held.append((value, np.array(value, copy=True)))
        self.__dict__["_watched_params"] = value

    monkeypatch.setattr(RoundEngine, "params", property(get, put), raising=False)
    return held


def _changed(held: list[tuple[Any, Any]]) -> list[int]:
    """Which of the watched arrays no longer hold what they held when assigned."""
    return [i for i, (now, then) in enumerate(held) if not np.array_equal(now, then)]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        # dense warm-up (the strategy), a model attack, clipping, a server optimizer
        {
            "warmup_rounds": 1,
            "attack": "signflip",
            "malicious": 0.34,
            "clip_norm": 1.0,
            "aggregator": "adam",
        },
        # torch.from_numpy on the model itself (the pool and ray backends copy it into shared
        # memory or a message, so they never hold the engine's array)
        {"backend": "vectorized"},
    ],
    ids=["sequential", "warmup-attack-clip-adam", "vectorized"],
)
def test_no_published_model_is_changed_in_place(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]
) -> None:
    # Prepare
    held = _watch(monkeypatch)
    cfg = replace(CFG, **settings)

    # Execute
    result = runner.run_simulation(cfg, progress=False)

    # Assert: the first model and one per committed round, each as it was published
    assert len(held) == 1 + sum(r.committed for r in result.records) == 1 + cfg.rounds
    assert _changed(held) == []
    np.testing.assert_array_equal(result.final_params, held[-1][1])


def test_the_watch_sees_a_model_changed_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a strategy that publishes by adding the step into the model in place
    class InPlace(Strategy):
        def publish(self, engine: RoundEngine, round_id: int, output: Any) -> None:
            engine.params += output.result.astype(np.float32)

    held = _watch(monkeypatch)
    monkeypatch.setattr(runner, "_WarmupStrategy", lambda warmup: InPlace())

    # Execute
    runner.run_simulation(replace(CFG, rounds=1, warmup_rounds=1), progress=False)

    # Assert: the first model was changed after it was assigned
    assert _changed(held) == [0]
