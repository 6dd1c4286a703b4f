"""A server optimizer's lr and tau are float32 numbers in its arithmetic (np.float32(lr)), so one
that float32 cannot hold is refused when the spec is built. Before, `adam:lr=1e308` (and
`avgm:lr=1e39`) built, float32(lr) was inf, and every round's step was inf or NaN (inf times a
zero momentum), which the engine refuses: every round abandoned. An lr below float32's smallest
value was 0: every step 0, the model never moved."""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import AggregatorSpecError, ClientUpdate, build_aggregator


@pytest.mark.parametrize(
    "spec",
    [
        "adam:lr=1e308",
        "avgm:lr=1e39",
        "yogi:lr=1e-50",
        "adagrad:lr=1e-46",
        "adam:tau=1e39",
        "adam:tau=1e-46",
    ],
)
def test_a_rate_float32_cannot_hold_is_refused(spec: str) -> None:
    with pytest.raises(AggregatorSpecError, match="float32"):
        build_aggregator(spec)


@pytest.mark.parametrize(
    "spec", ["adam:lr=0.01", "avgm:momentum=0.9,lr=1", "yogi:lr=1e30", "adagrad:tau=1e-40"]
)
def test_rates_float32_holds_build_and_step_finitely(spec: str) -> None:
    proc = build_aggregator(spec).create(4)
    ups = [ClientUpdate("a", SparseUpdate.from_dense(np.array([1, 0, 0, 0], np.float32)), 1.0)]
    out = proc.next(proc.initialize(), ups)
    assert np.isfinite(out.result).all()


@pytest.mark.parametrize("server_lr", [1e39, 1e308, 1e-46])
def test_a_task_server_lr_float32_cannot_hold_is_refused(server_lr: float) -> None:
    # The engine and the downlink multiply the step by np.float32(server_lr): inf (every round
    # abandoned) or 0 (the model never moves)
    from coordinator.engine import EngineConfig
    from coordinator.service.rounds import validate_task

    from .test_service_support import task_config

    with pytest.raises(ValueError, match="server_lr"):
        validate_task(task_config(server_lr=server_lr))
    with pytest.raises(ValueError, match="server_lr"):
        EngineConfig(clients_per_round=1, server_lr=server_lr)


def test_a_task_server_lr_in_float32s_range_is_accepted() -> None:
    from coordinator.service.rounds import validate_task

    from .test_service_support import task_config

    validate_task(task_config(server_lr=3e38))
    validate_task(task_config(server_lr=1e-40))
