"""The runner's view of the simulated fleet: who is eligible now, and how long a round takes.

`SimFleet` joins a `Population` (lazy device profiles, diurnal availability) and a `SimClock`
(per-device download + compute + upload times, deadline, over-selection, dropouts) behind the
few calls a round loop needs. Device indices are the runner's client numbers 0..n-1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .clock import RoundTiming, SimClock, check_deadline
from .population import DEFAULT_TIERS, Population, PopulationConfig, _is_int

__all__ = [
    "SimFleet",
    "Selection",
    "training_flops_per_sample",
    "relative_cost",
    "REFERENCE_FLOPS",
]

# Devices whose check-in draw is looked at per block when finding the earliest check-ins: the
# memory of one block's hashes and candidate profiles stays bounded however big the fleet.
_CHUNK = 262_144

# Forward + backward FLOPs of one MNIST-CNN training sample (torch's FlopCounterMode): the
# workload the population's compute speeds (samples/s) refer to.
REFERENCE_FLOPS = 72_384_512


def training_flops_per_sample(model: Any, sample_shape: Sequence[int]) -> int:
    """Forward + backward FLOPs of one example of shape `sample_shape` through `model`
    (a torch module), counted by `torch.utils.flop_counter`. Inputs are zeros, so token-id
    models see id 0."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *sample_shape))
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def relative_cost(model: Any, sample_shape: Sequence[int]) -> float:
    """`cost_per_sample` for `SimFleet`/`SimClock`: training FLOPs per example relative to the
    MNIST CNN (1.0 for it; the digits MLP is about 1.4e-4).

    Simulated compute is then linear in FLOPs, with no fixed cost per step or per round
    (framework dispatch, data loading, optimizer work, starting the job): a model much smaller
    than the MNIST CNN trains almost for free in simulated time (1,000 digits-MLP examples:
    4.7 ms at the low tier's median 30 samples/s), a lower bound. No published per-step
    overhead for phones is encoded; FedScale's client model is linear in samples too
    (docs/simulator.md, "Simulated clock")."""
    return max(training_flops_per_sample(model, sample_shape), 1) / REFERENCE_FLOPS


@dataclass(frozen=True)
class Selection:
    """How one round's selection went (`SimFleet.select`). Times in simulated seconds.

    `device_ids` is the pool the coordinator selects from when the round opens (at most the
    cohort size), in check-in order. `opened_by` is "cohort" (the pool reached the cohort
    size), "timeout" (the selection timeout had passed and the pool held at least `min_n`) or
    "abandoned" (neither within the wait window: no round opens, and `device_ids` is the
    largest pool seen). `waited_s` runs from the opening of the selection window to the
    round's opening (or to the end of the window); `first_checkin_s` from the window's opening
    to the first check-in (nan if nobody checked in).
    """

    device_ids: npt.NDArray[np.int64]
    opened_by: str
    waited_s: float
    first_checkin_s: float
    min_n: int

    @property
    def opened(self) -> bool:
        return self.opened_by != "abandoned"

    def summary(self) -> dict[str, float | int | str]:
        """Scalars for a per-round report (`measurements.selection` in rounds.json)."""
        return {
            "pool": int(self.device_ids.size),
            "opened_by": self.opened_by,
            "waited_s": float(self.waited_s),
            "first_checkin_s": float(self.first_checkin_s),
            "min_reports": int(self.min_n),
        }


class SimFleet:
    """A population plus a clock, seeded together.

    `deadline_s` is the reporting deadline of every round, in (0, 604800] s as the
    coordinator's (None: no deadline; a round that cannot fill then ends with the last
    surviving device's report, which no server knows: see `mobile_sim.clock`).
    `dropouts=False` zeroes every tier's dropout probability (timing only, same reports).
    `cost_per_sample` scales the devices' compute speed (measured on the MNIST CNN) to the
    model trained here; `population_kwargs` go to `PopulationConfig` (tiers, day shape).
    `checkin_period_s` is how often an eligible device checks in (`select`: each one checks in
    once, at a uniformly random time, in the first period of a selection window; 0: devices
    are in the coordinator's pool the moment they are eligible).
    """

    def __init__(
        self,
        num_devices: int,
        *,
        seed: int = 0,
        availability: Literal["diurnal", "always"] = "diurnal",
        deadline_s: float | None = None,
        cost_per_sample: float = 1.0,
        dropouts: bool = True,
        checkin_period_s: float = 0.0,
        **population_kwargs: Any,
    ) -> None:
        if not (checkin_period_s >= 0 and math.isfinite(checkin_period_s)):
            raise ValueError(f"checkin_period_s must be finite and >= 0, got {checkin_period_s}")
        # Checked here, not at the first round: the clock would refuse it only then.
        check_deadline(deadline_s)
        if not dropouts:
            tiers = population_kwargs.get("tiers", DEFAULT_TIERS)
            population_kwargs["tiers"] = tuple(replace(t, dropout_p=0.0) for t in tiers)
        self.population = Population(
            PopulationConfig(num_devices, seed, availability=availability, **population_kwargs)
        )
        self.clock = SimClock(seed, cost_per_sample=cost_per_sample)
        self.deadline_s = deadline_s
        self.checkin_period_s = float(checkin_period_s)
        self.idle_s = 0.0  # simulated time spent waiting for enough eligible devices
        self._waited_s = 0.0  # the part of it since the last round, for that round's report

    @property
    def now_s(self) -> float:
        return self.clock.now_s

    def eligible(
        self, n: int, rng: np.random.Generator, *, min_memory_mb: float = 0.0
    ) -> npt.NDArray[np.int64]:
        """Up to `n` device indices eligible at the current simulated time."""
        return self.population.sample_available(
            n, self.clock.now_s, rng, min_memory_mb=min_memory_mb
        )

    def wait_for(
        self,
        n: int,
        rng: np.random.Generator,
        *,
        step_s: float = 900.0,
        max_wait_s: float = 2 * 86_400.0,
        min_memory_mb: float = 0.0,
        selection_timeout_s: float | None = None,
        min_n: int = 1,
    ) -> npt.NDArray[np.int64]:
        """`n` eligible device indices, advancing simulated time in `step_s` steps until there
        are that many (as a coordinator idles until enough devices check in); the time waited
        is added to `idle_s`.

        With `selection_timeout_s`, the HTTP coordinator's selection rule applies too
        (`coordinator/service/rounds.py`: a round opens with the full cohort, or once the
        selection timeout has passed with at least `min_reports` devices): from the first step
        at least `selection_timeout_s` into the wait, at least `min_n` eligible devices are
        enough.

        If neither happens within `max_wait_s` (a fleet too small to fill the cohort, e.g. 13
        wanted of 10 devices), it returns the largest set it saw, and the clock moves only to
        the first step where that set was seen, not to the end of the window.

        This is `select`'s loop in its coarser, step-by-step form (see `_select`): no check-in
        delays, the timeout counted from the start of the wait, and no abandoned rounds.
        """
        return self._select(
            n,
            rng,
            round_id=None,
            min_n=min_n,
            selection_timeout_s=selection_timeout_s,
            step_s=step_s,
            max_wait_s=max_wait_s,
            min_memory_mb=min_memory_mb,
        ).device_ids

    def select(
        self,
        n: int,
        rng: np.random.Generator,
        *,
        round_id: int,
        min_n: int = 1,
        selection_timeout_s: float | None = None,
        step_s: float = 900.0,
        max_wait_s: float = 2 * 86_400.0,
        min_memory_mb: float = 0.0,
    ) -> Selection:
        """One round's selection under the HTTP coordinator's rule, on the simulated clock.

        The coordinator (`coordinator/service/rounds.py`) keeps a pool of the devices that have
        checked in. A round opens the moment the pool holds the cohort (`n`), or once
        `selection_timeout_s` has passed since the first check-in with at least `min_n`
        (`min_reports`) devices in the pool; below that it keeps waiting. Here:

        - the selection window opens at the current simulated time. When it opens, each
          eligible device checks in after `SimClock.checkin_delays` (uniform over one
          `checkin_period_s`, drawn from (seed, `round_id`, device)), so the pool grows one
          check-in at a time and the round opens at the `n`-th check-in of an eligible device
          (the earliest ones, over the whole fleet), or by the timeout rule;
        - availability is looked at again every `step_s` (15 minutes): if the first step does
          not open the round, the pool from then on is every device eligible at the latest
          step (they have all checked in: the period is at most one step), held until the
          next step; a round may open by the timeout rule between steps;
        - if nothing opens within `max_wait_s`, the selection is abandoned: no round opens,
          the clock moves to the end of the window, and the next round's selection starts
          there (the coordinator's retry). `device_ids` is then the largest pool seen.

        The clock moves to the opening; the wait is added to `idle_s` and, for an opened
        round, to the next `time_round`'s `waited_s`.
        """
        return self._select(
            n,
            rng,
            round_id=round_id,
            min_n=min_n,
            selection_timeout_s=selection_timeout_s,
            step_s=step_s,
            max_wait_s=max_wait_s,
            min_memory_mb=min_memory_mb,
        )

    def _select(
        self,
        n: int,
        rng: np.random.Generator,
        *,
        round_id: int | None,
        min_n: int,
        selection_timeout_s: float | None,
        step_s: float,
        max_wait_s: float,
        min_memory_mb: float,
    ) -> Selection:
        """The one selection loop behind `select` and `wait_for` (`round_id=None`).

        Both look at the fleet every `step_s` from the current simulated time (offset 0) and
        open the round with the cohort, or by the timeout rule with at least `min_n` devices.
        `wait_for` is the step-by-step form of the same loop, which differs in four ways only:

        - no check-in delays: every device eligible at a step is in the pool at that step;
        - a round opens only at a step, and the clock moves one `step_s` at a time (availability
          is looked at the time the clock reads after that many `advance(step_s)` calls);
        - the timeout counts from the start of the wait, not from the first check-in;
        - a window that opens nothing is not abandoned: the largest pool seen is returned, and
          the clock moves to the first step it was seen (as part of the round's wait).
        """
        stepwise = round_id is None
        period = 0.0 if stepwise else self.checkin_period_s
        if not (_is_int(n) and _is_int(min_n) and n >= 1 and 1 <= min_n <= n):
            raise ValueError(f"need n >= 1 and 1 <= min_n <= n, got n={n!r}, min_n={min_n!r}")
        # A finite window: with max_wait_s = inf a cohort that never fills would loop forever.
        if not (step_s > 0 and math.isfinite(step_s) and 0 <= max_wait_s < math.inf):
            raise ValueError(
                f"need step_s > 0 and max_wait_s >= 0, both finite, got {step_s}, {max_wait_s}"
            )
        if math.isnan(min_memory_mb):
            raise ValueError("min_memory_mb must be a number (MiB), got nan")
        if period > step_s:
            raise ValueError(f"checkin_period_s {period} must not exceed step_s {step_s}")
        if selection_timeout_s is not None and not selection_timeout_s >= 0:
            raise ValueError(f"selection_timeout_s must be >= 0, got {selection_timeout_s}")
        timeout = math.inf if selection_timeout_s is None else float(selection_timeout_s)
        t0 = self.clock.now_s
        t_step = t0  # the clock after `steps` calls of advance(step_s): `stepwise` looks here
        offset = 0.0  # seconds since the window opened, at the current step
        steps = 0
        first: float | None = None  # offset of the first check-in
        best, best_steps = np.zeros(0, dtype=np.int64), 0  # the largest pool, first seen
        while True:
            t = t_step if stepwise else t0 + offset
            if first is None and period > 0:
                assert round_id is not None  # period > 0 only for `select`
                ids, frac = self._earliest_checkins(n, t, round_id, min_memory_mb)
                times = offset + period * frac
            else:
                ids = self.population.sample_available(n, t, rng, min_memory_mb=min_memory_mb)
                times = np.full(ids.size, offset)
            if ids.size:
                if first is None:
                    first = float(times[0])
                opens = math.inf
                if ids.size >= n:
                    opens = float(times[n - 1])
                if ids.size >= min_n:
                    since = 0.0 if stepwise else first
                    opens = min(opens, max(since + timeout, float(times[min_n - 1])))
                # Opens at this step (`stepwise`), or before the next step looks again.
                opens_now = opens <= offset if stepwise else opens < offset + step_s
                if opens_now:
                    pool = ids[times <= opens][:n]
                    self._wait(opens, steps, step_s, stepwise=stepwise, count_for_round=True)
                    by = "cohort" if pool.size >= n else "timeout"
                    return Selection(pool, by, opens, first, min_n)
            if steps == 0 or ids.size > best.size:
                best, best_steps = ids, steps
            if offset >= max_wait_s:
                if stepwise:
                    waited = best_steps * step_s
                    self._wait(waited, best_steps, step_s, stepwise=True, count_for_round=True)
                else:
                    waited = offset
                    self._wait(offset, steps, step_s, stepwise=False, count_for_round=False)
                first_s = math.nan if first is None else first
                return Selection(best, "abandoned", waited, first_s, min_n)
            t_step += step_s
            offset += step_s
            steps += 1

    def _wait(
        self, seconds: float, steps: int, step_s: float, *, stepwise: bool, count_for_round: bool
    ) -> None:
        """Move the clock `seconds` forward (`stepwise`: as `steps` calls of advance(step_s))
        and count the wait in `idle_s` (and the next round's `waited_s` if `count_for_round`)."""
        if stepwise:
            parts = [step_s] * steps
        else:
            parts = [seconds] if seconds > 0 else []
        for part in parts:
            self.clock.advance(part)
            self.idle_s += part
            if count_for_round:
                self._waited_s += part

    def _earliest_checkins(
        self, n: int, sim_time_s: float, round_id: int, min_memory_mb: float
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """(ids, fractions): the (up to) `n` devices eligible at `sim_time_s` that check in
        first in round `round_id`, in check-in order, and their check-in times as fractions of
        the period. Exact over the whole fleet: it hashes every device's draw (block by block,
        cheap) but builds profiles only for devices whose draw is below a threshold `q`,
        raising `q` until `n` eligible ones are found or every device has been looked at."""
        total = len(self.population)
        q = min(1.0, max(4 * n, 256) / total)
        while True:
            got_ids, got_u = [], []
            for a in range(0, total, _CHUNK):
                ids = np.arange(a, min(a + _CHUNK, total), dtype=np.int64)
                u = self.clock.checkin_fraction(ids, round_id)
                if q < 1.0:
                    keep = u < q
                    ids, u = ids[keep], u[keep]
                prof = self.population.profiles(ids)
                ok = self.population.available_mask(prof, sim_time_s)
                ok &= prof.memory_mb >= min_memory_mb
                got_ids.append(ids[ok])
                got_u.append(u[ok])
            ids, u = np.concatenate(got_ids), np.concatenate(got_u)
            if ids.size >= n or q >= 1.0:
                order = np.argsort(u, kind="stable")[:n]
                return ids[order], u[order]
            # Every device with a draw below q was looked at; aim past the n-th next time.
            q = min(1.0, q * max(2.0, 1.5 * n / max(ids.size, 1)))

    def time_round(
        self,
        round_id: int,
        device_indices: Sequence[int] | npt.NDArray[np.int64],
        *,
        down_bytes: int | Sequence[int],
        up_bytes: int | Sequence[int],
        samples: int | Sequence[int],
        epochs: int,
        per_round: int,
    ) -> RoundTiming:
        """Race the selected cohort (see `SimClock.plan_round`); does not advance the clock.
        The timing's `waited_s` is the time `wait_for` idled since the last `advance`."""
        profiles = self.population.profiles(np.asarray(device_indices))
        timing = self.clock.plan_round(
            profiles,
            np.asarray(down_bytes),
            np.asarray(up_bytes),
            np.asarray(samples),
            epochs=epochs,
            per_round=per_round,
            deadline_s=self.deadline_s,
            round_id=round_id,
        )
        return replace(timing, waited_s=self._waited_s)

    def dropped(self, round_id: int, device_indices: Sequence[int]) -> npt.NDArray[np.bool_]:
        """bool[n]: which of the cohort vanish this round (so their training can be skipped)."""
        profiles = self.population.profiles(np.asarray(device_indices))
        return self.clock.dropout_mask(profiles, round_id)

    def advance(self, timing: RoundTiming) -> float:
        """Move simulated time past the round; returns the new simulated time (seconds)."""
        self._waited_s = 0.0
        return self.clock.advance(timing)
