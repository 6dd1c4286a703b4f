"""Configuration of secure (and grouped) aggregation for one task."""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol.secagg import NoiseKind

__all__ = ["SecureConfig", "group_count", "group_refusal"]


class GroupDpError(ValueError):
    """`SecureConfig.group_aggregator` has a dp stage, which is not allowed across groups."""


class GroupHistoryError(ValueError):
    """`SecureConfig.group_aggregator` has a stage that keeps per-device histories."""


def group_count(cohort: int, group_size: int | None) -> int:
    """How many SecAgg groups `split_groups` makes of a round of `cohort` devices: one without
    `group_size` or when it is at least the cohort, else max(1, cohort // group_size) (the last
    group takes the remainder, so a round of fewer than 2 g devices is one group)."""
    if group_size is None or group_size >= cohort:
        return 1
    return max(1, cohort // group_size)


def group_refusal(
    group_aggregator: str, cohort: int, group_size: int, *, src: str, grow: str
) -> str | None:
    """Why `group_aggregator` over the group sums of a full round of `cohort` devices in groups
    of `group_size` would never act as the robust rule it is, or None.

    Each stage's own bound first (`cohort_refusal`: Krum's n > 2f + 2, a fraction f or beta
    that tolerates none, bucketing's 3 bucket means); then a rule that outvotes (median,
    trimmed mean, geometric median, nearest-neighbour mixing) needs at least `MIN_BUCKETS` (3)
    group sums: over 2 or fewer it is their mean (the median of two is their mean, and of one
    its value; the geometric median of two, started from their mean, stays there; each of two
    mixes with the other), as `Bucketing` refuses for bucket means. fedavg, clips, server
    optimizers and the screens that judge each sum on its own (anomaly's max_norm, a cosine
    filter, centered clipping) take any number of groups: they act on two as on ten. `src` says where the count comes from and
    `grow` what raises it, in the caller's words (flags or fields). Raises
    `AggregatorSpecError` for a spec that does not parse."""
    from coordinator.aggregators._robust import MIN_BUCKETS, cohort_refusal

    chain = _stage_chain(group_aggregator)  # built once: its first stage is the whole rule
    groups = group_count(cohort, group_size)
    short = cohort_refusal(chain[0][1], groups, unit="group sums", src=src, grow=grow)
    if short is not None:
        return short
    if groups >= MIN_BUCKETS:
        return None
    from coordinator.aggregators._robust import (
        CoordinateMedian,
        GeometricMedian,
        NearestNeighborMixing,
        TrimmedMean,
    )

    outvoting = (CoordinateMedian, TrimmedMean, GeometricMedian, NearestNeighborMixing)
    for name, stage in chain:
        if isinstance(stage, outvoting):
            sums = "group sum" if groups == 1 else "group sums"
            return (
                f"{name} needs {MIN_BUCKETS} group sums or more a round to outvote a bad one, "
                f"and a full round has {groups} {sums} ({src}): over {MIN_BUCKETS - 1} or "
                f"fewer it aggregates as fedavg does (the median of two is their mean, of one "
                f"its value), so it would change nothing (raise {grow}, or use fedavg)"
            )
    return None


@dataclass(frozen=True, slots=True)
class SecureConfig:
    """How a task runs secure aggregation.

    coord_fraction: |S_r| / d, the shared coordinates sent each round (without a budget).
    upload_budget: bytes one device uploads over the four stages. When set, |S_r| is chosen
        each round as the largest that fits (`budget_k`): the ring is b + log2(n w_max) bits
        wide and the key stages grow with the graph degree, so small cohorts get more
        coordinates and large ones fewer, always within the budget. None: coord_fraction.
    explore: fraction of S_r drawn uniformly from the public seed; the rest is the top of a
        score decayed by `ema_decay` per round: the cohort's summed row/column energy sketch
        (`sketch`, needs the model's tensor shapes, off under DP) or else |global update|.
    sketch_bits / sketch_pool: sketch entry bits (<= value_bits; None: value_bits, which costs
        nothing extra since the ring is sized by the values) and column pooling.
    value_bits: b, the quantizer's bits per value. max_weight: devices send
        min(num_examples, max_weight) as their integer weight (1 = uniform mean).
    clip_norm: C, the L2 clip of the sent vector (values at S_r). coord_bound_sigmas: gamma,
        the per-coordinate range is C' = min(C, gamma * C / sqrt(k)) (after rotation each
        coordinate of a norm-C vector has stddev about C / sqrt(k)).
    rotate: randomized Hadamard over S_r before quantization.
    dither: subtractive dither (a public per-device uniform the coordinator subtracts from the
        sum) instead of stochastic rounding: half the rounding noise at the same bytes. It is
        used when max_weight = 1 (the coordinator must know each contributor's weight) and
        ignored otherwise.
    noise, noise_multiplier, expected_dropout, dp_delta: distributed DP; each device's noise
        is calibrated so that if at least (1 - expected_dropout) of the cohort survive, the sum
        carries stddev noise_multiplier * (integer-domain L2 sensitivity).
    epsilon_budget: with distributed DP, the epsilon (at dp_delta) the task may spend; inf (the
        default) sets none. A round whose unmasking could take epsilon past it is abandoned
        before any sum is unmasked (nothing released, nothing spent), and a round is not
        opened once even the most favourable next round would (`SecureCoordinator`); either
        way the round's measurements carry `budget_exhausted` and the service stops the task.
    degree_factor / threshold: graph degree k = 2 ceil(factor log2 n) and threshold t
        (default floor(k/2) + 1, also when threshold is 0).
    group_size: None for one SecAgg over the cohort; g for grouped mode, where SecAgg runs in
        groups of g (the last group takes the remainder) and `group_aggregator` (a
        coordinator.aggregators spec string) combines the group means.
    """

    # Defaults: fewer value bits, more coordinates and a finer sketch. The ring costs
    # m = b + ceil(log2 n) bits per sent value, and the log2 n part is fixed (7 bits at n = 100),
    # so a value bit is worth more as coordinates and sketch entries: 3-bit values on 1.25% of d
    # with an unpooled sketch upload about as much at n = 100 as 6-bit values on 1% with the
    # sketch pooled by 4 (docs/secure-aggregation.md, "Choosing b and |S_r|").
    coord_fraction: float = 0.0125
    upload_budget: int | None = None
    explore: float = 0.1
    ema_decay: float = 0.5
    value_bits: int = 3
    max_weight: int = 1
    clip_norm: float = 1.0
    # With 7 levels the range must be tight: +-2.5 sigma of a norm-C vector's rotated coordinate.
    coord_bound_sigmas: float = 2.5
    rotate: bool = True
    dither: bool = True
    noise: NoiseKind = NoiseKind.NONE
    noise_multiplier: float = 0.0
    expected_dropout: float = 0.1
    dp_delta: float = 1e-5
    epsilon_budget: float = math.inf
    degree_factor: float = 1.5
    threshold: int | None = None
    group_size: int | None = None
    group_aggregator: str = "fedavg"
    server_lr: float = 1.0
    sketch: bool = True
    sketch_bits: int | None = None
    sketch_pool: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        # Before, any value was stored: `noise="discrete_gaussian"` (the HTTP config's
        # spelling) or a typo made `dp` true and failed only when a round's plan was encoded.
        object.__setattr__(self, "noise", _noise_kind(self.noise))
        if not 0.0 < self.coord_fraction <= 1.0:
            raise ValueError(f"coord_fraction must be in (0, 1], got {self.coord_fraction}")
        if not 0.0 <= self.explore <= 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("explore in [0, 1] and ema_decay in [0, 1)")
        if not 1 <= self.value_bits <= 16:
            raise ValueError(f"value_bits must be in 1..16, got {self.value_bits}")
        if self.upload_budget is not None and not 0 < self.upload_budget <= 1 << 40:
            raise ValueError(
                f"upload_budget must be a positive byte count, got {self.upload_budget}"
            )
        if self.max_weight < 1:
            raise ValueError("max_weight must be >= 1")
        for name in ("clip_norm", "coord_bound_sigmas", "server_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v}")
        z = self.noise_multiplier
        if self.noise != NoiseKind.NONE:
            if not (math.isfinite(z) and z > 0):
                raise ValueError(f"noise needs a finite noise_multiplier > 0, got {z}")
            if self.max_weight != 1:
                raise ValueError("distributed DP needs max_weight=1 (uniform weights)")
        elif not (math.isfinite(z) and z >= 0):
            # Without noise it is not used, but a negative or infinite one was stored and
            # shown as the task's. (A positive one without noise is the CLI's usage error.)
            raise ValueError(
                f"noise_multiplier must be a finite number >= 0 (> 0 with noise), got {z}"
            )
        if not 0.0 <= self.expected_dropout < 1.0 or not 0.0 < self.dp_delta < 1.0:
            raise ValueError("expected_dropout in [0, 1) and dp_delta in (0, 1)")
        if not self.epsilon_budget > 0:  # NaN too
            raise ValueError(f"epsilon_budget must be > 0, got {self.epsilon_budget!r}")
        if math.isfinite(self.epsilon_budget) and self.noise == NoiseKind.NONE:
            # Without noise nothing is accounted, so the budget would never be checked.
            raise ValueError(
                f"epsilon_budget ({self.epsilon_budget:g}) needs distributed DP noise "
                "(noise discrete_gaussian or skellam, with noise_multiplier > 0)"
            )
        if not (math.isfinite(self.degree_factor) and self.degree_factor > 0):
            raise ValueError(
                f"degree_factor must be a positive finite number, got {self.degree_factor}"
            )
        if self.threshold is not None and self.threshold != 0 and self.threshold < 2:
            # 1 would let one share reveal a secret. 0 means the default, as None does (stores
            # written before 2026-11-30 may hold it; the plan reads `threshold or default`).
            raise ValueError(
                f"threshold must be at least 2 (or left out, or 0, for floor(k/2) + 1), "
                f"got {self.threshold}"
            )
        if self.group_size is not None and self.group_size < 3:
            raise ValueError("group_size must be at least 3")
        if self.group_size is not None:
            from coordinator.aggregators import build_aggregator
            from coordinator.aggregators._dp import find_dp

            if find_dp(build_aggregator(self.group_aggregator)) is not None:
                raise GroupDpError(
                    f"group_aggregator {self.group_aggregator!r} has a dp stage, which is not "
                    "allowed across SecAgg groups: it would noise group means the server has "
                    "already unmasked and count groups, not devices, in its epsilon; for DP use "
                    "distributed DP (noise discrete_gaussian or skellam with noise_multiplier)"
                )
            if (screen := _history_stage(self.group_aggregator)) is not None:
                raise GroupHistoryError(
                    f"group_aggregator {self.group_aggregator!r} has a {screen} stage, which "
                    "keeps per-device histories and is for plain rounds only: across SecAgg "
                    "groups it sees group sums, not devices, and the groups are drawn anew "
                    "each round, so it would track group slots and no device; drop it"
                )
        if self.sketch_bits is not None and not 1 <= self.sketch_bits <= self.value_bits:
            raise ValueError("sketch_bits must be in 1..value_bits")
        if self.sketch_pool < 1:
            raise ValueError("sketch_pool must be >= 1")
        if self.seed < 0:
            raise ValueError("seed must be non-negative")

    @property
    def dp(self) -> bool:
        return self.noise != NoiseKind.NONE


# Each NoiseKind by the lower-case name a task config writes (`"skellam"`).
NOISE_NAMES: dict[str, NoiseKind] = {k.name.lower(): k for k in NoiseKind}


def _noise_kind(value: object) -> NoiseKind:
    """`value` as a NoiseKind: a member, its name in NOISE_NAMES, or its wire code (an int,
    not a bool). Else ValueError naming the kinds."""
    if isinstance(value, NoiseKind):
        return value
    if isinstance(value, str) and value in NOISE_NAMES:
        return NOISE_NAMES[value]
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value in {k.value for k in NoiseKind}
    ):
        return NoiseKind(value)
    raise ValueError(f"noise must be a NoiseKind or one of {', '.join(NOISE_NAMES)}, got {value!r}")


def _stage_chain(spec: str) -> list[tuple[str, object]]:
    """Aggregator `spec`'s stages, outermost first, each with its name as written."""
    from coordinator.aggregators import build_aggregator
    from coordinator.aggregators._registry import split_stages

    chain: list[tuple[str, object]] = []
    stage: object = build_aggregator(spec)
    for text in split_stages(spec):
        if stage is None:
            break
        chain.append((text.partition(":")[0].strip().lower(), stage))
        stage = getattr(stage, "inner", None)
    return chain


def _history_stage(spec: str) -> str | None:
    """The name of the first stage of aggregator `spec` that keeps a history per device
    (`collusion`: `CollusionFilter`), or None."""
    from coordinator.aggregators import CollusionFilter

    return next((n for n, s in _stage_chain(spec) if isinstance(s, CollusionFilter)), None)
