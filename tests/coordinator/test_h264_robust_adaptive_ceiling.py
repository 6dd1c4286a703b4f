"""The adaptive norm bound's ceiling: `normbound:q=Q,...,max=M` and `dp:...,quantile=Q,max_clip=M`
(s25/robust finding 1).

The adaptive clip tracks quantile Q of every report's norm, attackers' included. Attackers that
send more than 1 - Q of a round's reports, all above the clip, keep the unclipped fraction
below Q, so C grows by a fixed factor every round without limit (the reviewer's repro:
`normbound:q=0.9,init=1` with 2 huge reports of 10 went from 1 to 3,290 in 400 rounds), and
their clipped reports grow with it. `max=` caps C; without it (the default) the clip moves
exactly as before. The tests with `max=` / `max_clip=` failed before: the parameter was
"unknown parameter(s) ['max'] for 'normbound'" (and 'max_clip' for dp), and `AdaptiveClip` had
no `maximum`.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    AdaptiveClip,
    AggregatorSpecError,
    ClientUpdate,
    Clip,
    build_aggregator,
)

D, N, ATTACKERS = 50, 10, 2


def _report(name: str, dense: np.ndarray) -> ClientUpdate:
    v = np.asarray(dense, dtype=np.float32)
    idx = np.arange(v.shape[0], dtype=np.int64)
    return ClientUpdate(name, SparseUpdate(idx, v, v.shape[0]), 1.0)


def _rounds(spec: str, rounds: int, attackers: int = ATTACKERS, seed: int = 1) -> list[dict]:
    """Each round's measurements: N - attackers honest reports of norm about 1 along g, and
    `attackers` reports of -1e9·g."""
    rng = np.random.default_rng(seed)
    g = np.ones(D) / np.sqrt(D)
    proc = build_aggregator(spec).create(D)
    state = proc.initialize()
    out = []
    for _ in range(rounds):
        batch = [
            _report(f"h{i}", g + 0.3 * rng.normal(size=D) / np.sqrt(D))
            for i in range(N - attackers)
        ]
        batch += [_report(f"a{j}", -1e9 * g) for j in range(attackers)]
        o = proc.next(state, batch)
        state = o.state
        out.append({"meas": o.measurements, "result": o.result.astype(np.float64), "state": state})
    return out


def test_two_huge_reports_of_ten_cannot_raise_the_clip_past_the_ceiling() -> None:
    # Prepare: the reviewer's setting; the clip is at 8 by round 100 without a ceiling.
    spec = "normbound:q=0.9,init=1,max=3+fedavg:uniform=1"
    # Execute
    rounds = _rounds(spec, 150)
    # Assert: the clip used never exceeds 3, and the carried clip neither
    clips = [r["meas"]["clip"] for r in rounds]
    assert max(clips) <= 3.0
    assert all(r["state"][1] <= 3.0 for r in rounds)
    assert clips[-1] == 3.0  # pushed to the ceiling and held there, round after round
    assert rounds[-1]["meas"]["clip_max"] == 3.0 and rounds[-1]["meas"]["clip_at_max"] is True
    # ... so the round's aggregate is at most (8 honest of norm ~1 + 2 x 3) / 10
    assert max(float(np.linalg.norm(r["result"])) for r in rounds) <= (8 * 1.5 + 2 * 3.0) / 10


def test_without_a_ceiling_the_same_attack_still_inflates_the_clip() -> None:
    # The default is unchanged (no ceiling): what the docs describe as the breakdown 1 - Q.
    clips = [r["meas"]["clip"] for r in _rounds("normbound:q=0.9,init=1+fedavg:uniform=1", 150)]
    assert clips[-1] > 20.0
    assert all(b >= a for a, b in zip(clips, clips[1:], strict=False))


def test_one_attacker_of_ten_stays_below_the_breakdown_and_never_meets_the_ceiling() -> None:
    rounds = _rounds("normbound:q=0.9,init=1,max=3+fedavg:uniform=1", 150, attackers=1)
    assert max(r["meas"]["clip"] for r in rounds) < 2.0
    assert not any(r["meas"]["clip_at_max"] for r in rounds)


def test_the_default_clip_moves_exactly_as_before() -> None:
    # A guard (passes on the code before too): the formula the adaptive clip followed before
    # the ceiling existed, bit for bit, and the same measurement keys.
    clip = AdaptiveClip(initial=1.0, target_quantile=0.9)
    assert build_aggregator("normbound:q=0.9,init=1+fedavg") == Clip(clip)
    rounds = _rounds("normbound:q=0.9,init=1+fedavg:uniform=1", 40)
    expected = 1.0
    for r in rounds:
        # Assert: bit-identical steps, and the measurements carry no ceiling keys
        assert r["meas"]["clip"] == expected
        assert list(r["meas"]) == ["clip", "clipped", "max_norm", "inner"]
        fraction = (N - r["meas"]["clipped"]) / N
        stepped = expected * math.exp(-0.2 * (fraction - 0.9))
        expected = float(min(max(stepped, float(np.finfo(np.float32).tiny)), sys.float_info.max))


def test_adaptive_clip_step_holds_the_maximum() -> None:
    assert AdaptiveClip().maximum is None  # the default: no ceiling
    clip = AdaptiveClip(initial=1.0, target_quantile=0.9, learning_rate=5.0, maximum=2.0)
    assert clip.step(1.0, 0.0) == 2.0  # exp(4.5) times, capped
    assert clip.step(2.0, 0.0) == 2.0
    assert clip.step(2.0, 1.0) == pytest.approx(2.0 * math.exp(-0.5))  # down is free
    assert AdaptiveClip(initial=1.0, maximum=1.0).step(1.0, 0.0) == 1.0  # max = init allowed


@pytest.mark.parametrize(
    ("spec", "maximum"),
    [
        ("normbound:q=0.9,init=1,max=4+fedavg", 4.0),
        ("normbound:q=0.9,init=1,max_clip=4+fedavg", 4.0),
        ("normbound:q=0.5,max=0.1+median", 0.1),  # the default init is 0.1
        ("normbound:q=0.9,init=1,max=1e+3+fedavg", 1000.0),
    ],
)
def test_the_parser_takes_max(spec: str, maximum: float) -> None:
    factory = build_aggregator(spec)
    assert isinstance(factory, Clip) and isinstance(factory.norm, AdaptiveClip)
    assert factory.norm.maximum == maximum


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "normbound:q=0.9,init=1,max=0.5",
            "normbound: the adaptive clip's ceiling must be finite and at least its initial "
            "clip (1.0), got 0.5",
        ),
        ("normbound:q=0.9,max=0.01", "at least its initial clip (0.1), got 0.01"),
        ("normbound:q=0.9,init=1,max=inf", "must be finite and at least its initial clip"),
        ("normbound:q=0.9,init=1,max=-1", "must be finite and at least its initial clip"),
        ("normbound:q=0.9,init=1,max=nan", "parameter 'max' is NaN"),
        ("normbound:q=0.9,init=1,max=big", "parameter 'max' needs a number, got 'big'"),
        (
            "normbound:5,max=8",
            "normbound: max= sets the adaptive clip, which needs a quantile q= "
            "(normbound:q=0.9,max=...); a fixed norm (normbound:5) takes none",
        ),
        ("normbound:5,init=1", "init= sets the adaptive clip, which needs a quantile q="),
        (
            "dp:clip=1,z=1,max_clip=4+fedavg",
            "dp: max_clip= is the adaptive clip's ceiling and needs quantile=",
        ),
        (
            "dp:clip=1,quantile=0.5,z=1,max_clip=0.5+fedavg",
            "dp: the adaptive clip's ceiling must be finite and at least its initial clip",
        ),
    ],
)
def test_the_parser_refuses_a_bad_ceiling_with_a_clear_message(spec: str, message: str) -> None:
    with pytest.raises(AggregatorSpecError) as err:
        build_aggregator(spec)
    assert message in str(err.value)


def test_the_dp_stages_adaptive_clip_honours_max_clip() -> None:
    # Prepare: dp's adaptive clip steps on a noised count, and the same attack inflates it
    # (and with it the noise z·C); seeded, so the run is repeatable.
    base = "dp:clip=1,quantile=0.9,z=0.01,seed=0{}+fedavg"
    capped = _rounds(base.format(",max_clip=2"), 150)
    free = _rounds(base.format(""), 150)
    # Assert
    assert max(r["meas"]["clip"] for r in capped) <= 2.0
    assert capped[-1]["meas"]["clip"] == 2.0
    assert free[-1]["meas"]["clip"] > 10.0
    factory = build_aggregator(base.format(",max_clip=2"))
    assert factory.clip == AdaptiveClip(initial=1.0, target_quantile=0.9, maximum=2.0)
