"""Simulated time: how long each round takes on real phones, and who makes the deadline.

A selected device downloads the model, trains, then uploads its update:
``t_i = (latency + down_bytes*8/down_bps) + samples*epochs*cost/compute_sps
+ (latency + up_bytes*8/up_bps)``. A device drops out with its own probability and never
reports. As in the coordinator (Bonawitz et al. 2019, sec. 2.2), the over-selected cohort races:
the first `per_round` reports that arrive before the deadline are kept, later ones are stragglers
and are ignored. The round ends when the `per_round`-th report arrives, or at the deadline. With
no deadline (`deadline_s=None`) a round that cannot fill ends when the last surviving device
reports: an idealisation, since no server knows which devices dropped out; the coordinator always
has a deadline (`TaskConfig.deadline_s`, at most `COORDINATOR_MAX_S`), and `plume sim --fleet
realistic` uses its default when none is given (docs/simulator.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from mobile_sim.population import ProfileBatch, _fmix, _fmix_int, _is_int, _uniform
from protocol.messages import TaskConfig

__all__ = [
    "RoundTiming",
    "SimClock",
    "ClockError",
    "COORDINATOR_MAX_S",
    "COORDINATOR_DEADLINE_S",
    "COORDINATOR_OVER_SELECTION",
    "check_deadline",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# The coordinator's bound on a task's deadline_s and selection_timeout_s, (0, 604800] seconds
# (one week; coordinator/service/rounds.py, validate_task, which writes it as 7 * 86400 and
# names no constant). tests/mobile_sim/test_h178_coordinator_deadline.py checks they agree.
COORDINATOR_MAX_S = 7 * 86_400.0


def _task_default(name: str) -> float:
    """The default of `TaskConfig` field `name` (a slots dataclass: read from its fields)."""
    (default,) = (f.default for f in fields(TaskConfig) if f.name == name)
    if not isinstance(default, float):
        raise TypeError(f"TaskConfig.{name} has no float default: {default!r}")
    return default


# The coordinator's default round deadline (protocol.messages.TaskConfig.deadline_s, 60 s):
# `plume sim --fleet realistic` without --deadline runs with it (SimConfig.deadline_s).
COORDINATOR_DEADLINE_S = _task_default("deadline_s")
# The coordinator's default over-selection (TaskConfig.over_selection, 1.3): `plume sim --fleet
# realistic` without --over-selection runs with it (SimConfig.over_selection).
COORDINATOR_OVER_SELECTION = _task_default("over_selection")


class ClockError(ValueError):
    """A round was planned with inconsistent arguments."""


def check_deadline(deadline_s: float | None) -> None:
    """Raise `ClockError` unless `deadline_s` is None or in (0, `COORDINATOR_MAX_S`] seconds:
    an infinite one (or 1e308) would end a round that cannot fill at an infinite time, which
    the clock cannot advance past."""
    if deadline_s is not None and not 0 < deadline_s <= COORDINATOR_MAX_S:
        raise ClockError(
            f"deadline_s must be > 0 seconds or None, at most {COORDINATOR_MAX_S:.0f} (a week, "
            f"the coordinator's bound), got {deadline_s}"
        )


def _per_device(name: str, values: npt.ArrayLike, n: int) -> F64:
    """float64[n] from a scalar or a length-n sequence of finite, non-negative numbers."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != n):
        raise ClockError(
            f"{name} must be one number or one per device ({n}), got shape {arr.shape}"
        )
    out = np.broadcast_to(arr, (n,))
    if n and not (np.isfinite(out).all() and out.min() >= 0):
        raise ClockError(f"bytes, samples and epochs must be non-negative and finite: {name}")
    return out


@dataclass(frozen=True)
class RoundTiming:
    """The simulated outcome of one round. Times in seconds from the round's start.

    `device_ids`, `download_s`, `compute_s`, `upload_s` and `finish_s` follow the order of the
    selected cohort; `finish_s` is +inf for dropped devices. `kept` lists device ids in arrival
    order; `stragglers` and `dropped` are in cohort order. `start_s` is the simulated time at
    which the round opened (seconds since the clock's origin) and `waited_s` the simulated time
    spent before it waiting for enough eligible devices, their check-ins and the selection
    timeout (set by `SimFleet`; not part of `duration_s`).
    """

    device_ids: I64
    download_s: F64
    compute_s: F64
    upload_s: F64
    finish_s: F64
    kept: I64
    stragglers: I64
    dropped: I64
    duration_s: float
    deadline_s: float | None
    start_s: float = 0.0
    waited_s: float = 0.0

    @property
    def kept_mask(self) -> npt.NDArray[np.bool_]:
        """bool[n] over the cohort: True where that device's update is used."""
        return np.isin(self.device_ids, self.kept)

    def summary(self) -> dict[str, float | int]:
        """Scalars for a per-round report row."""
        alive = np.isfinite(self.finish_s)
        return {
            "selected": int(self.device_ids.size),
            "kept": int(self.kept.size),
            "stragglers": int(self.stragglers.size),
            "dropped": int(self.dropped.size),
            "sim_duration_s": float(self.duration_s),
            "median_device_s": float(np.median(self.finish_s[alive])) if alive.any() else math.nan,
            "start_s": float(self.start_s),
            "waited_s": float(self.waited_s),
        }


class SimClock:
    """The simulated wall clock of a whole run, plus per-round timing plans.

    `cost_per_sample` scales the devices' compute speed (measured on the reference MNIST CNN) to
    another model: a model with twice the FLOPs per sample has cost 2.0. Dropout draws are a pure
    function of (seed, round_id, device_id), so every backend and every rerun agrees.
    """

    def __init__(
        self, seed: int = 0, *, cost_per_sample: float = 1.0, start_s: float = 0.0
    ) -> None:
        if not cost_per_sample > 0 or not math.isfinite(cost_per_sample):
            raise ClockError(f"cost_per_sample must be finite and > 0, got {cost_per_sample}")
        if not _is_int(seed) or seed < 0:
            raise ClockError(f"seed must be an integer >= 0, got {seed!r}")
        if not (math.isfinite(start_s) and start_s >= 0):
            raise ClockError(f"start_s must be finite and >= 0, got {start_s}")
        self.seed = seed
        self.cost_per_sample = cost_per_sample
        self.now_s = float(start_s)
        self._key = _fmix_int(seed * 0x9E3779B97F4A7C15 + 0xC10C)
        # A separate key so check-in draws never correlate with dropout draws.
        self._checkin_key = _fmix_int(seed * 0x9E3779B97F4A7C15 + 0xC4EC)

    def checkin_fraction(self, device_ids: I64, round_id: int) -> F64:
        """float64[n] in (0, 1): when each device next checks in during round `round_id`'s
        selection, as a fraction of the check-in period (uniform, independent per device and
        per round; a pure function of (seed, round_id, device_id))."""
        key = np.uint64(_fmix_int(self._checkin_key ^ _fmix_int(round_id + 1)))
        return _uniform(_fmix(np.asarray(device_ids, dtype=np.int64).astype(np.uint64) ^ key))

    def checkin_delays(self, device_ids: I64, round_id: int, period_s: float) -> F64:
        """float64[n]: seconds from the opening of round `round_id`'s selection window until
        each device checks in, uniform on [0, `period_s`) (see `checkin_fraction`)."""
        if not (period_s >= 0 and math.isfinite(period_s)):
            raise ClockError(f"period_s must be finite and >= 0, got {period_s}")
        return self.checkin_fraction(device_ids, round_id) * period_s

    def dropout_mask(self, profiles: ProfileBatch, round_id: int) -> npt.NDArray[np.bool_]:
        """bool[n]: which devices of the cohort vanish in round `round_id`."""
        key = np.uint64(_fmix_int(self._key ^ _fmix_int(round_id + 1)))
        u = _uniform(_fmix(profiles.device_ids.astype(np.uint64) ^ key))
        return u < profiles.dropout_p

    def device_times(
        self,
        profiles: ProfileBatch,
        down_bytes: npt.ArrayLike,
        up_bytes: npt.ArrayLike,
        samples: npt.ArrayLike,
        epochs: int,
    ) -> tuple[F64, F64, F64]:
        """(download_s, compute_s, upload_s), each float64[n]; bytes and samples broadcast."""
        n = len(profiles)
        if not _is_int(epochs) or epochs < 0:
            raise ClockError(f"bytes, samples and epochs must be non-negative: epochs {epochs!r}")
        down, up, smp = (
            _per_device(name, values, n)
            for name, values in (("down_bytes", down_bytes), ("up_bytes", up_bytes),
                                 ("samples", samples))
        )  # fmt: skip
        t_down = profiles.latency_s + down * 8.0 / profiles.down_bps
        t_comp = smp * epochs * self.cost_per_sample / profiles.compute_sps
        t_up = profiles.latency_s + up * 8.0 / profiles.up_bps
        return t_down, t_comp, t_up

    def plan_round(
        self,
        profiles: ProfileBatch,
        down_bytes: npt.ArrayLike,
        up_bytes: npt.ArrayLike,
        samples: npt.ArrayLike,
        *,
        epochs: int,
        per_round: int,
        deadline_s: float | None,
        round_id: int,
    ) -> RoundTiming:
        """Race the over-selected cohort `profiles` and decide who is kept.

        `down_bytes` (model download), `up_bytes` (the encoded update frame) and `samples` (local
        examples) are scalars or arrays aligned with `profiles`. Does not advance the clock; call
        `advance(timing)` once the round is committed or abandoned.
        """
        if not _is_int(per_round) or per_round < 1:
            raise ClockError(f"per_round must be >= 1, got {per_round!r}")
        check_deadline(deadline_s)
        ids = profiles.device_ids
        if np.unique(ids).size != ids.size:
            raise ClockError("a cohort must not select the same device twice")
        t_down, t_comp, t_up = self.device_times(profiles, down_bytes, up_bytes, samples, epochs)
        finish = t_down + t_comp + t_up
        dropped = self.dropout_mask(profiles, round_id)
        finish = np.where(dropped, np.inf, finish)
        # Stable order: ties (equal finish times) resolve by cohort position.
        order = np.argsort(finish, kind="stable")
        on_time = np.isfinite(finish[order])
        if deadline_s is not None:
            # Strictly before it: the coordinator refuses an upload at clock() >= deadline
            # (coordinator/service/rounds.py, submit).
            on_time &= finish[order] < deadline_s
        arrivals = order[on_time]
        kept_pos = arrivals[:per_round]
        if kept_pos.size == per_round:
            duration = float(finish[kept_pos[-1]])
        elif deadline_s is not None:
            duration = float(deadline_s)  # the server waits for reports until the deadline
        else:
            # No deadline (see the module docstring): ends with the last surviving device
            alive = finish[np.isfinite(finish)]
            duration = float(alive.max()) if alive.size else 0.0
        kept_mask = np.zeros(ids.size, dtype=np.bool_)
        kept_mask[kept_pos] = True
        return RoundTiming(
            device_ids=ids.copy(),
            download_s=t_down,
            compute_s=t_comp,
            upload_s=t_up,
            finish_s=finish,
            kept=ids[kept_pos],
            stragglers=ids[~kept_mask & ~dropped],
            dropped=ids[dropped],
            duration_s=duration,
            deadline_s=deadline_s,
            start_s=self.now_s,
        )

    def advance(self, timing: RoundTiming | float) -> float:
        """Move simulated time past a round (or by a number of seconds); returns the new time."""
        seconds = timing.duration_s if isinstance(timing, RoundTiming) else float(timing)
        if seconds < 0 or not math.isfinite(seconds):
            raise ClockError(f"cannot advance the clock by {seconds} s")
        self.now_s += seconds
        return self.now_s
