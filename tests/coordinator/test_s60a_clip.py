"""Norm clipping (`Clip`, `AdaptiveClip`): refusals at both sides of each bound, and the clip
against its definition u -> u · min(1, C / ||u||) with planted huge reports."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import AdaptiveClip, Clip, FedAvg, UpdateRows
from coordinator.aggregators._clip import MIN_CLIP, clip_factors, clip_update

from .test_aggregators_robust_edges import cu

ACCEPTED = [
    lambda: AdaptiveClip(initial=1e-30),
    lambda: AdaptiveClip(target_quantile=1e-9),
    lambda: AdaptiveClip(target_quantile=1 - 1e-9),
    lambda: AdaptiveClip(learning_rate=1e-9),
    lambda: AdaptiveClip(count_stddev=0.0),
    lambda: AdaptiveClip(initial=2.0, maximum=2.0),
    lambda: Clip(norm=MIN_CLIP),
    lambda: Clip(norm=AdaptiveClip(initial=MIN_CLIP)),
    lambda: Clip(seed=0),
]


@pytest.mark.parametrize("make", ACCEPTED, ids=range(len(ACCEPTED)))
def test_the_last_accepted_value_of_each_bound_builds(make: Any) -> None:
    make()


REFUSED = [
    (lambda: AdaptiveClip(initial=0.0), "initial clip must be finite and > 0"),
    (lambda: AdaptiveClip(initial=float("inf")), "initial clip must be finite and > 0"),
    (lambda: AdaptiveClip(target_quantile=0.0), "target quantile must be in \\(0, 1\\)"),
    (lambda: AdaptiveClip(target_quantile=1.0), "target quantile must be in \\(0, 1\\)"),
    (lambda: AdaptiveClip(learning_rate=0.0), "learning_rate must be finite and > 0"),
    (lambda: AdaptiveClip(learning_rate=float("inf")), "learning_rate must be finite and > 0"),
    (lambda: AdaptiveClip(count_stddev=-1e-9), "count_stddev must be finite and >= 0"),
    (lambda: AdaptiveClip(count_stddev=float("nan")), "count_stddev must be finite and >= 0"),
    (lambda: AdaptiveClip(initial=2.0, maximum=1.99), "ceiling must be finite and at least"),
    (lambda: AdaptiveClip(maximum=float("inf")), "ceiling must be finite and at least"),
    (lambda: Clip(norm=0.0), "clip norm must be finite and > 0"),
    (lambda: Clip(norm=float("nan")), "clip norm must be finite and > 0"),
    (lambda: Clip(norm=MIN_CLIP / 2), "clip norm must be at least"),
    (lambda: Clip(norm=AdaptiveClip(initial=MIN_CLIP / 2)), "initial clip \\(init=\\) must be"),
    (lambda: Clip(seed=-1), "clip seed must be >= 0"),
]


@pytest.mark.parametrize(("make", "message"), REFUSED, ids=range(len(REFUSED)))
def test_the_first_refused_value_of_each_bound_is_refused_by_name(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_clip_factors_are_min_1_c_over_norm_and_1_for_a_zero_report() -> None:
    f = clip_factors(np.array([0.0, 1.0, 2.0, 4.0]), 2.0)
    np.testing.assert_array_equal(f, [1.0, 1.0, 1.0, 0.5])


def test_clip_update_never_exceeds_the_clip_and_keeps_a_short_report() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        v = rng.normal(size=7).astype(np.float32) * np.float32(rng.uniform(0.1, 100))
        u = SparseUpdate(np.arange(7, dtype=np.int64), v, 7)
        c = float(rng.uniform(0.5, 5))
        out = clip_update(u, c)
        norm = math.sqrt(float(out.values.astype(np.float64) @ out.values.astype(np.float64)))
        assert norm <= c
        if math.sqrt(u.squared_norm()) <= c:
            assert out is u
        else:
            np.testing.assert_allclose(out.values, v * (c / math.sqrt(u.squared_norm())), rtol=1e-5)


@pytest.mark.parametrize("lazy", [False, True])
def test_a_fixed_clip_bounds_planted_huge_reports_and_measures_them(lazy: bool) -> None:
    # Reports: two honest (norm 1 and 0.5) and two huge ones (norm 1e6) clipped to C = 2.
    ups = [
        cu("h0", [1.0, 0.0]),
        cu("h1", [0.0, 0.5]),
        cu("b0", [1e6, 0.0]),
        cu("b1", [0.0, -1e6]),
    ]
    proc = Clip(norm=2.0, inner=FedAvg()).create(2)
    state = proc.initialize()
    if lazy:
        out = proc.next_rows(state, UpdateRows.from_client_updates(ups, 2))
    else:
        out = proc.next(state, ups)
    np.testing.assert_allclose(out.result, [(1.0 + 2.0) / 4, (0.5 - 2.0) / 4], rtol=1e-6)
    assert out.measurements["clip"] == 2.0 and out.measurements["clipped"] == 2
    assert out.measurements["max_norm"] == pytest.approx(1e6)
    assert out.state[1] == 2.0  # a fixed clip stays


def test_an_adaptive_clip_steps_by_the_unclipped_fraction() -> None:
    # 1 of 4 reports is within C = 1: the fraction 0.25 is below the target 0.5, so C grows by
    # exp(-0.2 · (0.25 - 0.5)).
    ups = [cu(f"d{i}", [float(i + 1) * 0.9]) for i in range(4)]
    proc = Clip(norm=AdaptiveClip(initial=1.0, target_quantile=0.5), inner=FedAvg()).create(1)
    out = proc.next(proc.initialize(), ups)
    assert out.state[1] == pytest.approx(math.exp(0.2 * 0.25))
    assert out.measurements["clipped"] == 3


@pytest.mark.parametrize(
    ("clip", "fraction", "want"),
    [
        (1.0, 0.5, 1.0),
        (1.0, 1.0, math.exp(-0.2 * 0.5)),
        (1.0, float("nan"), 1.0),
        (1e-300, 1.0, MIN_CLIP),
        (1.0, -1e9, math.exp(709.0)),
    ],
)
def test_adaptive_step_stays_within_min_clip_and_float_range(
    clip: float, fraction: float, want: float
) -> None:
    assert AdaptiveClip().step(clip, fraction) == pytest.approx(want)


def test_an_adaptive_clip_is_held_at_its_ceiling_and_says_so() -> None:
    ups = [cu(f"d{i}", [10.0]) for i in range(4)]
    proc = Clip(norm=AdaptiveClip(initial=1.0, maximum=1.05), inner=FedAvg()).create(1)
    out = proc.next(proc.initialize(), ups)
    assert out.state[1] == 1.05
    assert out.measurements["clip_max"] == 1.05 and out.measurements["clip_at_max"] is True
    plain = Clip(norm=AdaptiveClip(initial=1.0), inner=FedAvg()).create(1)
    assert "clip_max" not in plain.next(plain.initialize(), ups).measurements


def test_clip_refuses_a_report_of_the_wrong_size() -> None:
    proc = Clip(norm=1.0, inner=FedAvg()).create(3)
    with pytest.raises(ValueError, match="update of size 2, expected 3"):
        proc.next(proc.initialize(), [cu("a", [1.0, 2.0])])


def test_count_noise_moves_the_adaptive_clip_reproducibly_from_the_seed() -> None:
    ups = [cu(f"d{i}", [float(i + 1) * 0.9]) for i in range(4)]

    def next_clip(stddev: float, seed: int) -> float:
        norm = AdaptiveClip(initial=1.0, count_stddev=stddev)
        proc = Clip(norm=norm, inner=FedAvg(), seed=seed).create(1)
        return float(proc.next(proc.initialize(), ups).state[1])

    exact = next_clip(0.0, 0)
    assert exact == pytest.approx(math.exp(0.2 * 0.25))
    assert next_clip(1.0, 0) != exact
    assert next_clip(1.0, 0) == next_clip(1.0, 0)
    assert next_clip(1.0, 1) != next_clip(1.0, 0)
