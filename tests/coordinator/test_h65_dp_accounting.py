"""A dp stage whose accounting cannot work is refused when built (a 422 at task creation).

Before: `method=` was checked only when the round engine was made, which the service does
after storing the initial model (`PUT .../model` failed with the model stored and no engine),
and not at all without sampling; and an accounted noise multiplier so small that the RDP
accountant's arithmetic breaks was accepted: z = 1e-160 reported epsilon 0 (a privacy claim for
practically no noise), z = 1e-300 raised ZeroDivisionError in every round."""

from __future__ import annotations

import pytest

from coordinator.aggregators import AggregatorSpecError, build_aggregator
from coordinator.aggregators._dp import MIN_ACCOUNTED_NOISE_MULTIPLIER
from coordinator.service.rounds import validate_task

from .test_service_support import task_config


@pytest.mark.parametrize(
    "spec",
    [
        "dp:clip=1,z=1,population=100,sample=2,method=bogus",
        "dp:clip=1,z=1,method=bogus",
        "dp:clip=1,z=1,population=100,sample=2,method=pld",  # PLD has no fixed-size sampling
    ],
)
def test_an_accounting_method_that_cannot_account_is_refused_when_built(spec: str) -> None:
    with pytest.raises(AggregatorSpecError, match="method|PLD"):
        build_aggregator(spec)
    with pytest.raises(ValueError):
        validate_task(task_config(aggregator=spec))


@pytest.mark.parametrize(
    "spec",
    [
        "dp:clip=1,z=1e-160,population=100,sample=2",
        "dp:clip=1,z=1e-300,population=100,sample=2,eps=5",
        f"dp:clip=1,z={MIN_ACCOUNTED_NOISE_MULTIPLIER / 2},q=0.1,denom=10",
    ],
)
def test_an_accounted_noise_multiplier_below_the_minimum_is_refused(spec: str) -> None:
    with pytest.raises(AggregatorSpecError, match="noise multiplier"):
        build_aggregator(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "dp:clip=1,z=0.005,population=100,sample=2",
        "dp:clip=1,z=1,population=100,sample=2,method=rdp",
        "dp:clip=1,z=1,q=0.1,denom=10,method=pld",
        "dp:clip=1,z=1e-9",  # no epsilon is claimed: weak noise is the caller's choice
    ],
)
def test_accountable_dp_stages_still_build(spec: str) -> None:
    build_aggregator(spec)
