"""DPMean's adaptive clip: its upper clamp is fixed by the configuration, and its step stays a
positive finite clip whatever the noised count.

Before, the clamp on an adaptive clip under dp was `largest_clip(z_u, denom)` with z_u from the
round: with neither `denom=` nor fixed-size sampling (no cohort configured) z_u follows the
round's number of reports (sigma_b = reports / 20), so the clip ceiling did too, a
data-dependent quantity on the clip path. Now the ceiling is `DPMean.clip_ceiling()`, the bound
the build already checks on the first clip.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import (
    AdaptiveClip,
    ClientUpdate,
    Clip,
    DPMean,
    build_aggregator,
)
from coordinator.aggregators._dp import MAX_NOISE_SCALE
from coordinator.privacy import FixedSizeSampling

D = 4


def _reports(n: int, scale: float, seed: int = 0) -> list[ClientUpdate]:
    rng = np.random.default_rng(seed)
    return [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense((rng.normal(size=D) * scale).astype(np.float32)), 1.0)
        for i in range(n)
    ]  # fmt: skip


def _next_clip(dp: DPMean, n: int, scale: float) -> float:
    proc = dp.create(D)
    out = proc.next(proc.initialize(), _reports(n, scale))
    clip = out.state[1]
    assert isinstance(clip, float)
    return clip


def test_the_clip_ceiling_does_not_follow_the_reports_without_a_cohort() -> None:
    # z = 1, no denom=, no sampling: sigma_b = n / 20, so z_u is 2.4 at 11 reports and 1.03 at
    # 40. Every report is far above the clip and lr is huge: the step hits the ceiling. Before,
    # that was 1e30 / z_u(n): 4.2e29 at 11 reports and 9.7e29 at 40 (failed here).
    dp = build_aggregator("dp:clip=1,z=1,quantile=0.5,lr=1e4,seed=0")
    assert isinstance(dp, DPMean)
    clips = {n: _next_clip(dp, n, 1e3) for n in (11, 12, 40, 400)}
    assert set(clips.values()) == {dp.clip_ceiling()}
    assert dp.clip_ceiling() == MAX_NOISE_SCALE  # max(z, 1) = 1, no denominator


@pytest.mark.parametrize(
    "spec",
    [
        "dp:clip=1,z=3,quantile=0.5,lr=1e4,seed=0",
        "dp:clip=1,z=3,quantile=0.5,lr=1e4,denom=50,seed=0",
        "dp:clip=1,z=3,quantile=0.5,lr=1e4,population=1000,sample=400,seed=0",
        "dp:clip=1,z=3,quantile=0.5,lr=1e4,count_std=2,seed=0",
        "dp:clip=1,z=3,quantile=0.5,lr=1e4,count_std=2,denom=0.5,seed=0",
    ],
)
def test_the_ceiling_is_the_bound_checked_at_build(spec: str) -> None:
    dp = build_aggregator(spec)
    assert isinstance(dp, DPMean)
    cohort = dp.configured_cohort()
    z_u = dp.update_noise_multiplier(cohort) if cohort is not None else dp.noise_multiplier
    denominator = dp.denominator if dp.denominator is not None else 1.0
    assert dp.clip_ceiling() == DPMean.largest_clip(z_u, denominator)
    assert {_next_clip(dp, n, 1e3) for n in (31, 57, 200)} == {dp.clip_ceiling()}


@settings(max_examples=30, derandomize=True, deadline=None)
@given(
    z=st.floats(min_value=0.01, max_value=50.0),
    n=st.integers(min_value=1, max_value=60),
    which=st.sampled_from(["none", "denom", "sample", "count_std"]),
    lr=st.floats(min_value=1e-3, max_value=1e6),
    scale=st.floats(min_value=0.0, max_value=1e6),
)
def test_the_next_clip_is_positive_finite_and_below_a_ceiling_fixed_at_build(
    z: float, n: int, which: str, lr: float, scale: float
) -> None:
    kwargs: dict[str, object] = {}
    if which == "denom":
        kwargs["denominator"] = 100.0 * z
    elif which == "sample":
        kwargs["sampling"] = FixedSizeSampling(10**6, max(60, math.ceil(11 * z)))
    clip = AdaptiveClip(1.0, 0.5, lr, z if which == "count_std" else 0.0)
    dp = DPMean(z, clip=clip, seed=1, **kwargs)  # type: ignore[arg-type]
    if which == "none" and 2 * n / 20 <= z:
        return  # no cohort: sigma_b = n / 20 cannot split z (privacy.md, item 5)
    c = _next_clip(dp, n, scale)
    assert sys.float_info.min <= c <= dp.clip_ceiling()


@pytest.mark.parametrize("fraction", [math.inf, -math.inf, math.nan])
def test_the_step_takes_any_noised_fraction(fraction: float) -> None:
    # A count noise near float's largest value (count_std=1.7e308) draws +-inf. A NaN fraction
    # carries no information about the norms: before, it made the clip NaN (failed here), and
    # every later clip with it.
    c = AdaptiveClip(1.0, 0.5, 0.2).step(0.7, fraction)
    assert sys.float_info.min <= c <= sys.float_info.max
    if math.isnan(fraction):
        assert c == 0.7


@pytest.mark.parametrize(
    "factory",
    [
        lambda: DPMean(1.0, clip=AdaptiveClip(1.0, 0.5, 1.0, sys.float_info.max), seed=0),
        lambda: DPMean(
            1.0, clip=AdaptiveClip(1.0, 0.5, 1e300, sys.float_info.max), denominator=5.0, seed=0
        ),
        lambda: Clip(AdaptiveClip(1.0, 0.5, 1e300, sys.float_info.max), seed=0),
    ],
)
def test_an_absurd_count_std_keeps_every_round(factory: object) -> None:
    # count_std at float's largest value: the count noise itself overflows to +-inf. The round
    # proceeds and the clip stays a positive finite float (no OverflowError, no NaN).
    agg = factory()  # type: ignore[operator]
    proc = agg.create(D)
    state = proc.initialize()
    for r in range(6):
        out = proc.next(state, _reports(5, 10.0 ** (r % 3 - 1), seed=r))
        assert np.isfinite(out.result).all()
        state = out.state
        assert sys.float_info.min <= state[1] <= sys.float_info.max
