"""Specs that built and then failed every round: an adaptive clip step past float's range, and a
dp noise too large for the released float32 mean.

Before: `normbound:q=0.5,lr=1e308` built, then the second round's clip step raised
OverflowError (math.exp) and, the state unchanged, so did every later round (a service task
abandoning each); a huge count noise (`count_std=`) did the same under dp, and a large
learning rate drove the clip to 0.0, where it stayed (0 times anything). `dp:clip=1e300,z=1`
(or `z=1e300`, or `denom=1e-300`) built, and every round's noised mean overflowed float32 to
inf, which the engine refuses: every round abandoned."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import (
    AdaptiveClip,
    AggregatorSpecError,
    ClientUpdate,
    build_aggregator,
)
from coordinator.aggregators._clip import MIN_CLIP


def _rounds(spec: str, scales: list[float], d: int = 8) -> list[float]:
    """Run one round per scale (5 reports of that norm scale); the clip of each round."""
    rng = np.random.default_rng(0)
    proc = build_aggregator(spec).create(d)
    state = proc.initialize()
    clips = []
    for scale in scales:
        ups = [
            ClientUpdate(f"d{i}", SparseUpdate.from_dense((rng.normal(size=d) * scale).astype(np.float32)), 1.0)
            for i in range(5)
        ]  # fmt: skip
        out = proc.next(state, ups)
        assert np.isfinite(out.result).all()
        clips.append(out.measurements["clip"])
        state = out.state
    return clips


@pytest.mark.parametrize(
    "spec",
    [
        "normbound:q=0.5,lr=1e308",
        "normbound:q=0.5,lr=1e308,init=1e300",
        "dp:clip=1,z=1,quantile=0.5,lr=1,denom=5,count_std=1e300,seed=0",
    ],
)
def test_an_adaptive_clip_step_past_floats_range_is_clamped_not_raised(spec: str) -> None:
    clips = _rounds(spec, [1e-3, 10.0, 1e-3, 10.0, 1e-3])
    assert all(sys.float_info.min <= c <= sys.float_info.max for c in clips)


def test_a_clip_driven_towards_zero_recovers() -> None:
    # Zero reports shrink the clip by exp(-500) a round: before, it reached 0.0 within two
    # rounds and stayed there (0 times any factor), clipping every later report to nothing.
    # Now it stops at MIN_CLIP (float32's smallest normal, since 3463406; float64's before)
    # and grows again once reports exceed it.
    clips = _rounds("normbound:q=0.5,lr=1e3", [0.0] * 4 + [10.0] * 2)
    assert min(clips) == MIN_CLIP
    assert clips[-1] > clips[-2]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    clip=st.floats(min_value=sys.float_info.min, max_value=sys.float_info.max),
    fraction=st.floats(min_value=-1e300, max_value=1e300),
    lr=st.floats(min_value=1e-300, max_value=1e300),
    q=st.floats(min_value=0.01, max_value=0.99),
)
def test_the_step_is_always_a_positive_finite_clip(
    clip: float, fraction: float, lr: float, q: float
) -> None:
    c = AdaptiveClip(1.0, q, lr).step(clip, fraction)
    assert sys.float_info.min <= c <= sys.float_info.max


def test_the_step_is_unchanged_in_range() -> None:
    import math

    a = AdaptiveClip(0.1, 0.5, 0.2)
    assert a.step(0.7, 0.9) == 0.7 * math.exp(-0.2 * (0.9 - 0.5))


@pytest.mark.parametrize(
    "spec",
    [
        "dp:clip=1e300,z=1",
        "dp:clip=1,z=1e300",
        "dp:clip=1,z=1,denom=1e-300",
        "dp:clip=1e20,z=1e20,population=100,sample=10",
        "dp:clip=1e300,z=1,quantile=0.5,count_std=1",
    ],
)
def test_a_dp_noise_the_float32_mean_cannot_hold_is_refused(spec: str) -> None:
    with pytest.raises(AggregatorSpecError, match="noise"):
        build_aggregator(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "dp:clip=1,z=1.0,population=1000,sample=10,eps=8+fedavg",
        "dp:clip=1e10,z=100",
        "dp:clip=0.5,z=1,denom=0.001",
    ],
)
def test_dp_noise_within_range_still_builds(spec: str) -> None:
    build_aggregator(spec)
