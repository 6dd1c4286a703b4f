"""The simulator refuses an accounted dp stage whose noise multiplier is below DPMean's minimum
when the config is made, before any data loads or round runs (a guard: `plume sim` has no
epsilon-to-z calibration of its own; z comes from the --aggregator spec)."""

from __future__ import annotations

import pytest

from coordinator.aggregators._dp import MIN_ACCOUNTED_NOISE_MULTIPLIER
from mobile_sim.runner import SimConfig


@pytest.mark.parametrize("z", [MIN_ACCOUNTED_NOISE_MULTIPLIER / 2, 1e-160])
def test_an_accounted_z_below_the_minimum_is_refused_at_config_time(z: float) -> None:
    # Prepare: a dp stage accounting fixed-size cohorts of the whole per-round selection
    spec = f"dp:clip=1,z={z},population=20,sample=5+fedavg"
    # Execute / Assert: refused by SimConfig, naming the spec, the minimum and the value
    with pytest.raises(ValueError, match=r"aggregator 'dp:clip=1,z=.*at least 0\.001.*got "):
        SimConfig(dataset="digits", clients=20, per_round=5, rounds=2, aggregator=spec)


def test_the_minimum_itself_and_an_unaccounted_tiny_z_are_accepted() -> None:
    # Execute / Assert: no error (no epsilon is claimed without sampling)
    for spec in (
        f"dp:clip=1,z={MIN_ACCOUNTED_NOISE_MULTIPLIER},population=20,sample=5+fedavg",
        "dp:clip=1,z=1e-9+fedavg",
    ):
        SimConfig(dataset="digits", clients=20, per_round=5, rounds=2, aggregator=spec)
