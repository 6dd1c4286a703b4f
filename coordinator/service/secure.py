"""Secure (SecAgg+) tasks in the durable service: their settings, stage caps and per-task state.

A task whose `TaskConfig.secure` is set runs every round as SecAgg+ over a shared coordinate
set (`coordinator.secure`). The round's cohort, deadline, state and published model live in
SQLite like any round's; the protocol's key material, shares and the running masked sum live
only in memory (`SecureTaskState.registry`), so a coordinator that stops mid-round abandons
that round on restart and the next round starts fresh (docs/secure-aggregation.md, "The
coordinator service").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from compression import ModelSpec
from coordinator.aggregators._base import shown
from coordinator.secure import (
    DistributedDpAccountant,
    PlanNumbers,
    SecureConfig,
    SecureCoordinator,
    budget_k,
    make_plan,
    min_round_rho,
    plan_numbers,
)
from coordinator.secure._config import NOISE_NAMES, GroupDpError
from protocol.secagg import MAX_DEGREE, MAX_NODES, Stage, choose_degree

from ._secagg_routes import SecureRegistry, stage_cap

__all__ = [
    "GROUP_DP_REFUSAL",
    "MAX_SECURE_COORDS",
    "SECURE_STAGES",
    "SERVICE_KEYS",
    "SecureSettings",
    "SecureTaskState",
    "check_plan",
    "group_extremes",
    "parse_secure",
    "round_groups",
    "stage_cap",
]

SECURE_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
# Most coordinates |S_r| a secure round may share. Its plan sends 4 bytes a coordinate, and an
# SDK device reads at most 16 MiB of a secure-stage message (sdk.client.MAX_SECURE_RESPONSE):
# a larger set could never be delivered. Checked before anything of that size is allocated
# (a 2^31-coordinate set is 16 GB of indices).
MAX_SECURE_COORDS = 4_000_000
# Keys of `TaskConfig.secure` that the service consumes itself; every other key is a
# `SecureConfig` field. `seed` and `server_lr` come from the task, so they are refused here.
SERVICE_KEYS = ("stage_timeout_s", "stage_idle_s")
_FROM_TASK = ("seed", "server_lr")
# Why `parse_secure` refuses a `dp` stage (any, accounting or not) in a grouped task's
# `group_aggregator`. Such a stage runs on the group means the server has already unmasked:
# its `population=`/`sample=` count group sums, not devices, so the epsilon it reports (and its
# `eps=` budget) under-counts what one device spends; the task's cohorts come from the task
# seed, not a secret draw, so no amplification by sampling holds; and none of the central-DP
# checks a plain task's `dp` stage gets (delta, `seed=`, `q=`, the pool, sample >= cohort)
# reach it. Without accounting it is noise the server adds to sums it saw un-noised, which
# protects no device from it and claims no epsilon anyone could read. Distributed DP is the
# secure tasks' DP (docs/privacy.md, "Distributed DP in secure mode").
GROUP_DP_REFUSAL = (
    "secure.group_aggregator: a dp stage is not allowed there: it would clip and noise the "
    "group means the server has already unmasked, so its population=/sample= would count "
    "group sums, not devices (the epsilon it reports, and any eps= budget, would under-count "
    "what one device spends), the task's cohorts are drawn from the task seed (no "
    "amplification by sampling holds), and the server still sees every un-noised group sum; "
    "for DP in a secure task use distributed DP: secure.noise discrete_gaussian or skellam "
    "with secure.noise_multiplier (and secure.epsilon_budget for a budget), which works in "
    "grouped mode too (docs/privacy.md, 'Distributed DP in secure mode')"
)


@dataclass(frozen=True, slots=True)
class SecureSettings:
    """A secure task's protocol config and stage timing (seconds).

    stage_timeout_s: a stage closes this long after it opened, with whoever uploaded.
    stage_idle_s: if set, a stage also closes once this long has passed since its latest
        upload (a cohort that has gone quiet need not wait for the full timeout).
    A stage closes at once when every device still in it has uploaded; the round's own
    `deadline_s` bounds the whole protocol.
    """

    config: SecureConfig
    stage_timeout_s: float = 30.0
    stage_idle_s: float | None = None


def _number(raw: dict[str, Any], key: str) -> float | None:
    v = raw.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"secure.{key} must be a finite number")
    try:  # a JSON integer beyond float's range (10**400) cannot be one: OverflowError
        out = float(v)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise ValueError(f"secure.{key} must be a finite number")
    return out


def parse_secure(raw: dict[str, Any], *, seed: int, server_lr: float) -> SecureSettings:
    """`TaskConfig.secure` -> settings; `ValueError` naming the first bad key or value."""
    if not isinstance(raw, dict):
        raise ValueError("secure must be an object")
    fields = {f.name: f for f in dataclasses.fields(SecureConfig)}
    for key in raw:
        if key in _FROM_TASK:
            raise ValueError(f"secure.{key} is not allowed: the task's {key} is used")
        if key not in fields and key not in SERVICE_KEYS:
            # A key that is not a plain name shown quoted (a lone surrogate could not be sent
            # back in the answer's JSON at all).
            named = key if key.isascii() and key.isidentifier() else ascii(key)
            raise ValueError(f"secure.{named} is not a SecureConfig field or stage setting")
    timeout = _number(raw, "stage_timeout_s")
    idle = _number(raw, "stage_idle_s")
    if timeout is not None and not 0 < timeout <= 86400:
        raise ValueError("secure.stage_timeout_s must be in (0, 86400]")
    if idle is not None and not 0 < idle <= 86400:
        raise ValueError("secure.stage_idle_s must be in (0, 86400]")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SERVICE_KEYS:
            continue
        default = fields[key].default
        if key == "noise":
            if not isinstance(value, str) or value not in NOISE_NAMES:
                raise ValueError(f"secure.noise must be one of {', '.join(NOISE_NAMES)}")
            kwargs[key] = NOISE_NAMES[value]
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"secure.{key} must be a boolean")
            kwargs[key] = value
        elif isinstance(default, str):
            if not isinstance(value, str) or len(value) > 200:
                raise ValueError(f"secure.{key} must be a string")
            kwargs[key] = value
        elif isinstance(default, float):
            kwargs[key] = _number(raw, key)
            if kwargs[key] is None:
                raise ValueError(f"secure.{key} must be a number")
        else:  # int, or int | None (threshold, group_size, sketch_bits)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"secure.{key} must be an integer")
            if value is not None and abs(value) > 2**31:
                # An integer, refused for its size ("must be an integer" said the wrong thing).
                raise ValueError(
                    f"secure.{key} must be an integer in [-2**31, 2**31], got {shown(value)}"
                )
            if value is None and default is not None:
                raise ValueError(f"secure.{key} must be an integer")
            kwargs[key] = value
    try:
        config = SecureConfig(**kwargs, seed=seed, server_lr=server_lr)
    except GroupDpError:  # SecureConfig's check, in the service's words
        raise ValueError(GROUP_DP_REFUSAL) from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"secure: {exc}") from None
    return SecureSettings(config, 30.0 if timeout is None else timeout, idle)


def group_extremes(cohort: int, least: int, group_size: int | None) -> tuple[int, int, int]:
    """Over every round of `least`..`cohort` devices: (the smallest SecAgg group, the fewest
    devices the largest group has in a round holding a group that small, the largest group).

    `split_groups` makes groups of g and gives the last the remainder: a round of fewer than
    2 g devices is one group of all of them; from 2 g on, its groups have g devices but the
    last, which has g + (n mod g). Without `group_size` a round is one group.
    """
    if not 1 <= least <= cohort:
        raise ValueError(f"need 1 <= least={least} <= cohort={cohort}")
    g = cohort if group_size is None else group_size
    single = (least, min(cohort, 2 * g - 1)) if least < 2 * g else None  # one-group rounds
    lo, hi = max(least, 2 * g), cohort  # rounds of several groups: g, ..., g + (n mod g)
    if lo > hi:
        assert single is not None
        return single[0], single[0], single[1]
    if hi - lo >= g - 1 or lo % g > hi % g:  # every residue, or they wrap past g - 1
        r_lo, r_hi = 0, g - 1
    else:
        r_lo, r_hi = lo % g, hi % g
    largest = g + r_hi if single is None else max(single[1], g + r_hi)
    if single is None or g < single[0]:
        return g, g + r_lo, largest
    return single[0], single[0], largest  # least <= g: one group of `least` is the smallest


def round_groups(cohort: int, least: int, group_size: int | None) -> list[tuple[int, ...]]:
    """Every distinct split of a round of `least`..`cohort` devices: its group sizes, ascending
    (the last is the largest).

    `split_groups` makes groups of g and gives the last the remainder: a round of fewer than
    2 g devices is one group of all of them; from 2 g on, its groups have g devices but the
    last, which has g + (n mod g). Without `group_size` a round is one group. So there are at
    most 3 g splits (one-group rounds below 2 g, then a remainder 0..g - 1), or
    cohort - least + 1 without groups.
    """
    if not 1 <= least <= cohort:
        raise ValueError(f"need 1 <= least={least} <= cohort={cohort}")
    g = group_size
    single = cohort if g is None else min(cohort, 2 * g - 1)
    out: list[tuple[int, ...]] = [(n,) for n in range(least, single + 1)]
    if g is not None and cohort >= 2 * g:
        lo, hi = max(least, 2 * g), cohort
        residues = range(g) if hi - lo >= g - 1 else sorted({n % g for n in range(lo, hi + 1)})
        out += [(g,) if r == 0 else (g, g + r) for r in residues]
    return list(dict.fromkeys(out))


def check_plan(settings: SecureSettings, cohort: int, model_size: int, least: int = 3) -> None:
    """`_check_plan`, remembered: a task's config is validated when it is created, when its
    model is uploaded, and when a coordinator loads it, and planning every round size of a
    large ungrouped cohort takes seconds (its time grows with the cohort)."""
    if (why := _plan_refusal(settings, cohort, model_size, least)) is not None:
        raise ValueError(why)


@functools.lru_cache(maxsize=64)
def _plan_refusal(settings: SecureSettings, cohort: int, model_size: int, least: int) -> str | None:
    try:
        _check_plan(settings, cohort, model_size, least)
    except ValueError as exc:
        return str(exc)
    return None


def _check_plan(settings: SecureSettings, cohort: int, model_size: int, least: int = 3) -> None:
    """Plan the rounds a task can open, so a config that cannot work (e.g. a ring above 64
    bits, or more per-device noise than a device's sampler draws) is refused when the task is
    created rather than when a round opens.

    A round has `least`..`cohort` devices (a selection timeout opens one with fewer than the
    cohort; SecAgg needs 3), split into groups (`round_groups`), and its |S_r| is the
    round's (`SecureCoordinator.k_for`; with `upload_budget` it depends on its group sizes). Every (group size, |S_r|) pair a round can have is considered, not only
    the smallest and largest groups: under distributed DP a group's noise headroom follows
    n / ceil((1 - expected_dropout) n), which rounding makes uneven, so a mid-size group can
    need the widest ring; and under a budget a round's |S_r| need not shrink as its groups
    grow.

    What `make_plan` refuses for a pair depends on it only through numbers it computes first
    (`plan_numbers`: arithmetic, no S_r): the graph degree and threshold (refused when the
    threshold is not a majority, or the degree is above the limits), each device's noise
    variance (refused outside what the sampler draws), and the ring bits (refused above 64).
    Those are computed for every pair, and only the pairs extreme in one of them are planned
    (at most five): if any pair is refused, one of these is.

    An `epsilon_budget` that even the most favourable first round would pass is refused: the
    task could never release a sum (`SecureCoordinator.close_round` abandons such a round).
    """
    cfg = settings.config
    if cfg.dp and math.isfinite(cfg.epsilon_budget):
        rho = min_round_rho(cfg.noise_multiplier, cfg.expected_dropout)
        first = DistributedDpAccountant(cfg.dp_delta).epsilon_after(rho)
        if first > cfg.epsilon_budget:
            raise ValueError(
                f"epsilon_budget {cfg.epsilon_budget:g} is below what any one round spends "
                f"(at least epsilon {first:.4g} at dp_delta {cfg.dp_delta:g} with "
                f"noise_multiplier {cfg.noise_multiplier:g} and expected_dropout "
                f"{cfg.expected_dropout:g}): no round could be released; raise epsilon_budget "
                "or noise_multiplier"
            )
    least = max(3, min(least, cohort))
    g = cfg.group_size
    # The largest group a round can have (`round_groups`), refused before every round size
    # is listed and planned: a cohort of 1.3 million took 39 s to reach make_plan's refusal.
    if (largest := cohort if g is None else min(cohort, 2 * g - 1)) > MAX_NODES:
        raise ValueError(
            f"a round's group of {largest} devices is above the {MAX_NODES:,} one SecAgg "
            "instance holds: use secure.group_size, or select fewer devices a round"
        )
    splits = round_groups(cohort, least, g)
    large = max(split[-1] for split in splits)
    if (degree := choose_degree(large, cfg.degree_factor)) > MAX_DEGREE:
        raise ValueError(
            f"a cohort of {large} gives graph degree {degree} = 2 ceil(degree_factor log2 n), "
            f"above {MAX_DEGREE} (a device's share-keys work grows with its square): lower "
            "secure.degree_factor or use secure.group_size"
        )
    # |S_r| as a round computes it (SecureCoordinator.k_for: the largest that fits the budget
    # in each of its groups): under distributed DP the ring's noise headroom and each
    # device's noise grow with it.
    k = max(1, int(round(cfg.coord_fraction * model_size)))
    fits: dict[int, int] = {}  # group size -> the largest |S_r| within the budget
    for n in sorted({n for split in splits for n in split}):
        if cfg.upload_budget is not None:
            k = budget_k(cfg, n, model_size, near=k if fits else None)
        fits[n] = k
    coords = {split: min(fits[n] for n in split) for split in splits}
    if (most := max(coords.values())) > MAX_SECURE_COORDS:
        raise ValueError(
            f"a round would share {most} coordinates (|S_r|), above {MAX_SECURE_COORDS:,}: "
            "its plan (4 bytes a coordinate) would exceed what a device reads of a secure "
            "message (16 MiB); lower secure.coord_fraction or secure.upload_budget"
        )
    pairs = {(n, coords[split]) for split in splits for n in split}
    numbers: dict[tuple[int, int], PlanNumbers] = {}
    for n, k in sorted(pairs):
        try:
            numbers[n, k] = plan_numbers(cfg, n, k)
        except ValueError as exc:  # a ring past 64 bits, or noise past a float's range
            raise ValueError(
                f"a round's group of {n} devices (|S_r| = {k}) cannot be planned: {exc}"
            ) from None
    extremes = (
        lambda p: (numbers[p].degree, p[0]),  # degree and size limits
        lambda p: numbers[p].degree - 2 * numbers[p].threshold,  # t > k/2
        lambda p: numbers[p].variance,  # the sampler's maximum
        lambda p: -numbers[p].variance,  # and minimum
        lambda p: numbers[p].ring_bits,  # 64 bits
    )
    ordered = sorted(pairs)  # ties go to the smallest pair, so the choice is deterministic
    plans = {max(ordered, key=key) for key in extremes}
    for n, k in sorted(plans, key=lambda p: (-p[0], p[1])):  # the largest group first
        # make_plan refuses a ring above 64 bits, a per-device noise variance the device's
        # sampler cannot draw and a threshold not above half the graph degree (t > k/2 keeps
        # a node's two secrets apart).
        try:
            make_plan(cfg, 1, n, model_size, np.arange(k, dtype=np.int64))
        except ValueError as exc:
            raise ValueError(
                f"a round's group of {n} devices (|S_r| = {k}) cannot be planned: {exc}"
            ) from None


class SecureTaskState:
    """One secure task in memory: its `SecureCoordinator` behind a `SecureRegistry`."""

    def __init__(
        self,
        settings: SecureSettings,
        params: npt.NDArray[np.float32],
        spec: ModelSpec,
        released_dp: list[dict[str, Any]],
    ) -> None:
        self.settings = settings
        coord = SecureCoordinator(params, settings.config, spec=spec)
        for dp in released_dp:
            coord.replay_dp(dp)
        self.registry = SecureRegistry(
            coord, stage_timeout_s=settings.stage_timeout_s, stage_idle_s=settings.stage_idle_s
        )

    @property
    def coordinator(self) -> SecureCoordinator:
        return self.registry.coordinator

    def set_params(self, params: npt.NDArray[np.float32]) -> None:
        """The published model: the next round's digest is computed over exactly these bytes."""
        self.coordinator.params = np.array(params, dtype=np.float32, copy=True)

    def upload_cap(self, round_id: int, stage: Stage) -> int:
        """Largest legal upload of `stage` in `round_id` (bytes); 0 once the round is gone
        (it closed meanwhile: the upload is then refused as closed, not by its size)."""
        try:
            return self.registry.upload_cap(round_id, stage)
        except LookupError:
            return 0
