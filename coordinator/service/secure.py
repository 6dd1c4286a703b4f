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
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from compression import ModelSpec
from coordinator.secure import SecureConfig, SecureCoordinator, budget_k, make_plan
from protocol.secagg import MAX_DEGREE, NoiseKind, Stage, choose_degree

from ._secagg_routes import SecureRegistry, stage_cap

__all__ = [
    "MAX_SECURE_COORDS",
    "SECURE_STAGES",
    "SERVICE_KEYS",
    "SecureSettings",
    "SecureTaskState",
    "parse_secure",
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
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"secure.{key} must be a finite number")
    return float(v)


def parse_secure(raw: dict[str, Any], *, seed: int, server_lr: float) -> SecureSettings:
    """`TaskConfig.secure` -> settings; `ValueError` naming the first bad key or value."""
    if not isinstance(raw, dict):
        raise ValueError("secure must be an object")
    fields = {f.name: f for f in dataclasses.fields(SecureConfig)}
    for key in raw:
        if key in _FROM_TASK:
            raise ValueError(f"secure.{key} is not allowed: the task's {key} is used")
        if key not in fields and key not in SERVICE_KEYS:
            raise ValueError(f"secure.{key} is not a SecureConfig field or stage setting")
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
            kinds = {k.name.lower(): k for k in NoiseKind}
            if not isinstance(value, str) or value not in kinds:
                raise ValueError(f"secure.noise must be one of {', '.join(kinds)}")
            kwargs[key] = kinds[value]
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
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**31
            ):
                raise ValueError(f"secure.{key} must be an integer")
            if value is None and default is not None:
                raise ValueError(f"secure.{key} must be an integer")
            kwargs[key] = value
    try:
        config = SecureConfig(**kwargs, seed=seed, server_lr=server_lr)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"secure: {exc}") from None
    if config.group_size is not None:
        from coordinator.aggregators import build_aggregator

        build_aggregator(config.group_aggregator)
    return SecureSettings(config, 30.0 if timeout is None else timeout, idle)


def check_plan(settings: SecureSettings, cohort: int, model_size: int) -> None:
    """Plan a round of `cohort` devices once, so a config that cannot work (e.g. a ring above
    64 bits) is refused when the task is created rather than when its first round opens."""
    cfg = settings.config
    group = cohort if cfg.group_size is None else min(cohort, cfg.group_size * 2 - 1)
    if (degree := choose_degree(group, cfg.degree_factor)) > MAX_DEGREE:
        raise ValueError(
            f"a cohort of {group} gives graph degree {degree} = 2 ceil(degree_factor log2 n), "
            f"above {MAX_DEGREE} (a device's share-keys work grows with its square): lower "
            "secure.degree_factor or use secure.group_size"
        )
    # |S_r| as a round computes it (SecureCoordinator.k_for): under distributed DP the ring's
    # noise headroom grows with it, so the plan is checked at that size.
    if cfg.upload_budget is None:
        coords = max(1, int(round(cfg.coord_fraction * model_size)))
    else:
        coords = budget_k(cfg, group, model_size)
    if coords > MAX_SECURE_COORDS:
        raise ValueError(
            f"a round would share {coords} coordinates (|S_r|), above {MAX_SECURE_COORDS:,}: "
            "its plan (4 bytes a coordinate) would exceed what a device reads of a secure "
            "message (16 MiB); lower secure.coord_fraction or secure.upload_budget"
        )
    plan = make_plan(cfg, 1, group, model_size, np.arange(coords, dtype=np.int64))
    # The guarantee needs t > k/2 (no answer set gives t shares of both of a node's secrets);
    # the largest group has the largest k, and smaller ones only lower it.
    if 2 * plan.threshold <= plan.degree:
        raise ValueError(
            f"threshold {plan.threshold} must exceed half the graph degree {plan.degree}"
        )


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
            plans = self.registry.plans(round_id)
        except LookupError:
            return 0
        return stage_cap(plans, stage)
