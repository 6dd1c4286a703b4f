"""L2 clipping (norm bounding) of each report before an inner aggregator, fixed or adaptive.

Clipping scales a whole update, u -> u · min(1, C / ||u||_2). Clamping single coordinates is a
different thing and gives no DP guarantee. Adaptive clipping follows Andrew et al. 2021
("Differentially private learning with adaptive clipping"): C tracks a target quantile of
the update norms by a geometric step on the (optionally noised) fraction of unclipped updates.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from compression import SparseUpdate

from ._base import (
    AggregateOutput,
    AggregatorFactory,
    ClientUpdate,
    check_finite_reports,
    finite_number,
    shown,
)
from ._mean import FedAvg
from ._robust import UpdateRows, forward_rows

__all__ = ["AdaptiveClip", "Clip", "MIN_CLIP", "clip_update", "clip_factors"]


# The smallest clip `Clip` (normbound) and `DPMean` (dp) build with, and the floor of an adaptive
# clip's step: float32's smallest normal number (1.1754944e-38). The clipped reports are
# float32, so a smaller clip rounds them to 0 or to a few subnormal levels.
MIN_CLIP = float(np.finfo(np.float32).tiny)
# exp(709) is finite (exp(709.79) is not): a larger exponent only makes the clip the largest float.
_MAX_EXP = 709.0


@dataclass(frozen=True, slots=True)
class AdaptiveClip:
    """Quantile-tracking clip norm: C <- C · exp(-learning_rate · (b - target_quantile)).

    b is the fraction of reports with norm <= C (noised by the caller when private).
    initial: the first round's C (> 0). target_quantile in (0, 1). learning_rate: the geometric
    step eta (Andrew et al. use 0.2). count_stddev: Gaussian noise on the count of unclipped
    reports (in reports); 0 means exact counting (fine for robustness, not private). Private
    only inside `DPMean`, which draws it from fresh OS entropy and accounts it; `Clip` draws it
    from its own seed (anyone can recompute it) and publishes the exact `clipped` count and
    `max_norm` besides, so there it steadies the clip and hides nothing.
    maximum: a ceiling on C (at least `initial`), None for none (float's largest). The clip
    tracks quantile Q of every report's norm, attackers' included: attackers sending more
    than 1 - Q of a round's reports, all above C, keep the unclipped fraction below Q and
    raise C by a fixed factor every round, without limit (and their clipped reports with it).
    A ceiling bounds what each of them can send, whatever their share; set it from the honest
    norms (a few times `initial`). None keeps the unbounded clip.
    """

    initial: float = 0.1
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 0.0
    maximum: float | None = None

    def __post_init__(self) -> None:
        if not self.initial > 0 or not finite_number(self.initial):
            raise ValueError(f"initial clip must be finite and > 0, got {shown(self.initial)}")
        if not 0.0 < self.target_quantile < 1.0:
            raise ValueError(
                f"target quantile must be in (0, 1), got {shown(self.target_quantile)}"
            )
        if not (self.learning_rate > 0 and finite_number(self.learning_rate)):
            raise ValueError(
                f"learning_rate must be finite and > 0, got {shown(self.learning_rate)}"
            )
        if not (self.count_stddev >= 0 and finite_number(self.count_stddev)):
            raise ValueError(
                f"count_stddev must be finite and >= 0, got {shown(self.count_stddev)}"
            )
        if self.maximum is not None and not (
            finite_number(self.maximum) and self.maximum >= self.initial
        ):
            raise ValueError(
                f"the adaptive clip's ceiling must be finite and at least its initial clip "
                f"({shown(self.initial)}), got {shown(self.maximum)}"
            )

    def step(self, clip: float, unclipped_fraction: float) -> float:
        """The next clip norm given this round's (noised) fraction of unclipped reports, kept
        within [MIN_CLIP, float's largest]: a step past float's range (a large learning rate, a
        noised fraction far from [0, 1]) raised OverflowError in math.exp, round after round,
        and one below it left the clip at 0.0, which no later step moves. Below MIN_CLIP
        (float32's smallest normal; the floor was float64's, 2.2e-308) every clipped float32
        report rounds to 0, and a clip that sank there (a run of zero reports) took hundreds of
        rounds of exactly-zero aggregates to climb back. A NaN fraction says nothing about the
        norms and leaves the clip as it is (it made the clip NaN for good). With `maximum`
        the clip stays at or below it."""
        value = clip
        if not math.isnan(unclipped_fraction):
            exponent = -self.learning_rate * (unclipped_fraction - self.target_quantile)
            value = clip * math.exp(min(exponent, _MAX_EXP))
        ceiling = sys.float_info.max if self.maximum is None else self.maximum
        return float(min(max(value, MIN_CLIP), ceiling))


def clip_factors(norms: npt.NDArray[np.float64], clip: float) -> npt.NDArray[np.float64]:
    """float64[n] factors min(1, clip / norm) (1 for zero-norm updates)."""
    safe = np.where(norms > 0, norms, 1.0)
    return np.asarray(np.where(norms > clip, clip / safe, 1.0), dtype=np.float64)


def clip_update(update: SparseUpdate, clip: float, *, always_scale: bool = False) -> SparseUpdate:
    """The update scaled to L2 norm at most `clip` (same coordinates), exactly: the float32
    result's norm (computed in float64, as `squared_norm` does) never exceeds `clip`.

    Rounding the scaled values to float32 lands above `clip` about half the time (by up to a
    few 1e-8 relative); DP's sensitivity bound needs <=, so the factor is shrunk until it holds.

    always_scale: scale a report under the clip too (by 1, which leaves its values as they
    are), so that clipping costs the same arithmetic whether a report is clipped or not. DPMean
    asks for it: otherwise a round's aggregation time, which /metrics and the next version's
    appearance make public, grows with the number of clipped reports it does not publish.
    """
    norm = math.sqrt(update.squared_norm())
    if norm <= clip and not always_scale:
        return update
    v64 = update.values.astype(np.float64)
    factor = clip / norm if norm > clip else 1.0
    for _ in range(64):
        values = (v64 * factor).astype(np.float32)
        w = values.astype(np.float64)
        if math.sqrt(float(w @ w)) <= clip:
            break
        factor *= 1.0 - 2.0**-22  # a few float32 ulps per step; one step almost always suffices
    else:  # unreachable for finite input: 64 steps shrink by 1.5e-5 relative
        values = np.zeros_like(update.values)
    return SparseUpdate(update.indices, values, update.size)


@dataclass(frozen=True, slots=True)
class Clip:
    """Norm bounding: clip each report to L2 norm `norm`, then aggregate with `inner`.

    `norm` is a fixed C >= MIN_CLIP or an `AdaptiveClip` whose `initial` is >= MIN_CLIP (as
    `DPMean` requires of its clip: smaller, the clipped float32 reports round to 0). Weights
    and device ids pass through.
    Measurements: {"clip": C used this round, "clipped": count, "max_norm": largest norm seen,
    "inner": inner measurements}; an adaptive clip with a ceiling (`AdaptiveClip.maximum`)
    adds "clip_max" and "clip_at_max" (the next round's C is held at the ceiling). Memory: one
    scaled copy of the reports' values.
    """

    norm: float | AdaptiveClip = 1.0
    inner: AggregatorFactory = field(default_factory=FedAvg)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.norm, AdaptiveClip) and not (
            self.norm > 0 and finite_number(self.norm)
        ):
            raise ValueError(f"clip norm must be finite and > 0, got {shown(self.norm)}")
        adaptive = isinstance(self.norm, AdaptiveClip)
        first = self.norm.initial if isinstance(self.norm, AdaptiveClip) else self.norm
        if not first >= MIN_CLIP:
            # The clipped reports are float32: scaled to a smaller norm they round to 0 (or to
            # a few subnormal levels), and the aggregate of any inner rule is (nearly) 0. The
            # floor `DPMean` holds its clip to (the same constant).
            what = "initial clip (init=)" if adaptive else "clip norm"
            raise ValueError(
                f"{what} must be at least {MIN_CLIP:.8g}, float32's smallest normal number "
                f"(smaller, the clipped float32 reports round to 0), got {shown(first)}"
            )
        if not self.seed >= 0:
            # np.random.default_rng refuses negative seeds: fail here, not mid-round.
            raise ValueError(f"clip seed must be >= 0, got {shown(self.seed)}")

    def create(self, size: int) -> _ClipProcess:
        return _ClipProcess(size, self.norm, self.inner.create(size), self.seed)


class _ClipProcess:
    def __init__(self, size: int, norm: float | AdaptiveClip, inner: Any, seed: int) -> None:
        self.size, self.norm, self.inner, self.seed = size, norm, inner, seed

    def initialize(self) -> Any:
        c = self.norm.initial if isinstance(self.norm, AdaptiveClip) else float(self.norm)
        return (0, c, self.inner.initialize())

    def _next_clip(self, rnd: int, clip: float, norms: npt.NDArray[np.float64]) -> float:
        if not isinstance(self.norm, AdaptiveClip) or norms.shape[0] == 0:
            return clip
        unclipped = float(np.count_nonzero(norms <= clip))
        if self.norm.count_stddev > 0:
            rng = np.random.default_rng([self.seed, rnd])
            unclipped += float(rng.normal(0.0, self.norm.count_stddev))
        return self.norm.step(clip, unclipped / norms.shape[0])

    def _finish(
        self, state: Any, norms: npt.NDArray[np.float64], out: AggregateOutput
    ) -> AggregateOutput:
        rnd, clip, _ = state
        new_clip = self._next_clip(rnd, clip, norms)
        meas: dict[str, Any] = {
            "clip": clip,
            "clipped": int(np.count_nonzero(norms > clip)),
            "max_norm": float(norms.max()) if norms.shape[0] else 0.0,
        }
        if isinstance(self.norm, AdaptiveClip) and self.norm.maximum is not None:
            # Only with a ceiling: without one the measurements are what they were.
            meas.update(clip_max=self.norm.maximum, clip_at_max=new_clip >= self.norm.maximum)
        meas["inner"] = out.measurements
        return AggregateOutput((rnd + 1, new_clip, out.state), out.result, meas)

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput:
        _, clip, inner_state = state
        for cu in updates:
            if cu.update.size != self.size:
                raise ValueError(f"update of size {cu.update.size}, expected {self.size}")
        # An infinite norm would scale the report by C / inf = 0 and hide the bad value.
        check_finite_reports(updates)
        norms = np.array([math.sqrt(cu.update.squared_norm()) for cu in updates], dtype=np.float64)
        clipped = [
            ClientUpdate(cu.device_id, clip_update(cu.update, clip), cu.weight) for cu in updates
        ]
        return self._finish(state, norms, self.inner.next(inner_state, clipped))

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        _, clip, inner_state = state
        norms = np.sqrt(rows.sq_norms())
        out = forward_rows(self.inner, inner_state, rows.scaled(clip_factors(norms, clip)))
        return self._finish(state, norms, out)
