"""An interrupted run's `SimResult.final_params` is the model of its last finished round, also
when Ctrl-C comes after a round closed but before it was recorded (while it is evaluated)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import mobile_sim.runner as runner
import sdk.trainer

CFG = runner.SimConfig(
    dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=3, local_epochs=1
)


def test_ctrl_c_while_a_round_is_evaluated_keeps_the_last_finished_rounds_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the model after round 1 of this config; Ctrl-C while round 2 is evaluated
    after_one = runner.run_simulation(replace(CFG, rounds=1), progress=False)
    real = sdk.trainer.evaluate
    calls = {"n": 0}

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sdk.trainer, "evaluate", evaluate)

    # Execute
    with pytest.raises(runner.RunInterrupted) as info:
        runner.run_simulation(CFG, progress=False)

    # Assert: round 1 only, and its model (round 2 had closed and changed the engine's)
    partial = info.value.result
    assert [r.round for r in partial.records] == [1]
    np.testing.assert_array_equal(partial.final_params, after_one.final_params)
