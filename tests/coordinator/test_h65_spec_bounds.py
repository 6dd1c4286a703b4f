"""Aggregator specs the rounds cannot run are refused when built, with a reason.

Before: `dp:...,seed=-1` built, then every round failed on `default_rng(-1)` and was abandoned
(Clip and Bucketing already refused a negative seed); `cclip:iters=1e9` and
`geomed:max_iter=1e14` built, and a single round then iterated for practically ever."""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    AggregatorSpecError,
    CenteredClipping,
    ClientUpdate,
    DPMean,
    GeometricMedian,
    build_aggregator,
)
from coordinator.aggregators._robust import MAX_CCLIP_ITERATIONS, MAX_GEOMED_ITERATIONS
from coordinator.service.rounds import validate_task

from .test_service_support import task_config


@pytest.mark.parametrize(
    "spec",
    [
        "dp:clip=1,z=1,seed=-1",
        "dp:clip=1,z=1,seed=-1+fedavg",
        "dp:clip=1,z=1,population=100,sample=2,seed=-5",
        "normbound:1,seed=-1",
        "bucket:2,seed=-1+median",
    ],
)
def test_a_negative_seed_is_refused_when_the_spec_is_built(spec: str) -> None:
    with pytest.raises(AggregatorSpecError, match="seed"):
        build_aggregator(spec)


def test_dpmean_refuses_a_negative_seed_itself() -> None:
    with pytest.raises(ValueError, match="seed"):
        DPMean(1.0, seed=-1)


def test_a_task_with_a_negative_dp_seed_is_refused_at_creation() -> None:
    # The service's creation check (422 validation) runs the spec's build.
    with pytest.raises(ValueError, match="seed"):
        validate_task(task_config(aggregator="dp:clip=1,z=1,seed=-1"))


def test_a_seeded_dp_stage_still_runs_a_round() -> None:
    # seed=0 and a seed far past 64 bits both seed numpy (SeedSequence takes any int >= 0)
    ups = [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.ones(4, np.float32)), 1.0)
        for i in range(3)
    ]
    for seed in ("0", "123456789012345678901234567890"):
        proc = build_aggregator(f"dp:clip=1,z=1,seed={seed}").create(4)
        out = proc.next(proc.initialize(), ups)
        assert np.isfinite(out.result).all()


@pytest.mark.parametrize(
    "spec",
    [
        "cclip:iters=1e9",
        f"cclip:tau=1,iters={MAX_CCLIP_ITERATIONS + 1}",
        "geomed:max_iter=1e14",
        f"geomed:max_iter={MAX_GEOMED_ITERATIONS + 1}",
        "cosfilter+geomed:max_iter=1e9",
        "bucket:2+cclip:iterations=1e6",
    ],
)
def test_an_iteration_count_past_its_bound_is_refused_naming_the_bound(spec: str) -> None:
    with pytest.raises(AggregatorSpecError, match="at most") as refused:
        build_aggregator(spec)
    bound = MAX_CCLIP_ITERATIONS if "cclip" in spec else MAX_GEOMED_ITERATIONS
    assert f"{bound:,}" in str(refused.value)


@pytest.mark.parametrize(
    "spec",
    [
        "geomed",
        "geomed:max_iter=1",
        f"geomed:max_iter={MAX_GEOMED_ITERATIONS}",
        "cclip:tau=1,beta=0.9,iters=1",
        f"cclip:tau=auto,iters={MAX_CCLIP_ITERATIONS}",
    ],
)
def test_iteration_counts_up_to_the_bound_still_build(spec: str) -> None:
    build_aggregator(spec)


def test_the_bounds_cover_what_the_code_and_tests_use() -> None:
    # The defaults and the largest counts the suite builds directly stay valid.
    assert MAX_GEOMED_ITERATIONS >= 1000 and MAX_CCLIP_ITERATIONS >= 3
    GeometricMedian(nu=1e-9, max_iter=1000, tol=1e-12)
    CenteredClipping(None, 0.0, 3)
    with pytest.raises(ValueError, match="at most"):
        GeometricMedian(max_iter=MAX_GEOMED_ITERATIONS + 1)
    with pytest.raises(ValueError, match="at most"):
        CenteredClipping(iterations=MAX_CCLIP_ITERATIONS + 1)
