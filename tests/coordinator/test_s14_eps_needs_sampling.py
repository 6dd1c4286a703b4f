"""An epsilon budget without a sampling model was accepted and never checked (no sampling means
no accountant): `dp:clip=1,z=1,eps=8` built and ran every round with no budget. It is refused
when the aggregator is built, with a sentence saying what to add."""

from __future__ import annotations

import pytest

from coordinator.aggregators import AggregatorSpecError, DPMean, build_aggregator


@pytest.mark.parametrize("spec", ["dp:clip=1,z=1,eps=8+fedavg", "dp:clip=1,z=1,denom=10,eps=8"])
def test_a_budget_without_sampling_is_refused(spec: str) -> None:
    with pytest.raises((AggregatorSpecError, ValueError), match="needs a sampling model"):
        build_aggregator(spec)


def test_the_same_budget_with_sampling_builds() -> None:
    build_aggregator("dp:clip=1,z=1,q=0.01,denom=10,eps=8+fedavg")
    build_aggregator("dp:clip=1,z=1,population=100,sample=10,eps=8+fedavg")
    build_aggregator("dp:clip=1,z=1+fedavg")  # no budget, no sampling: no epsilon, as before


def test_dpmean_refuses_it_directly() -> None:
    with pytest.raises(ValueError, match="needs a sampling model"):
        DPMean(1.0, clip=1.0, epsilon_budget=8.0)
