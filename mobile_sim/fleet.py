"""The runner's view of the simulated fleet: who is eligible now, and how long a round takes.

`SimFleet` joins a `Population` (lazy device profiles, diurnal availability) and a `SimClock`
(per-device download + compute + upload times, deadline, over-selection, dropouts) behind the
few calls a round loop needs. Device indices are the runner's client numbers 0..n-1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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

    from .backends._base import model_failed

    x = torch.zeros((1, *sample_shape))
    try:
        with FlopCounterMode(display=False) as counter:
            model(x).sum().backward()
    except ValueError:
        raise
    except Exception as exc:  # the model's own failure: one line, as a worker's is
        where = f"counting the training FLOPs of one sample of shape {tuple(sample_shape)}"
        raise model_failed(f"{where} through {type(model).__name__}", exc) from exc
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
    to the first check-in (nan if nobody checked in; 0 when the pool already held devices when
    the window opened). `carried` counts those: devices that checked in while the previous
    round ran and were not selected, still in the coordinator's pool at its close.
    """

    device_ids: npt.NDArray[np.int64]
    opened_by: str
    waited_s: float
    first_checkin_s: float
    min_n: int
    carried: int = 0

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
            "carried": int(self.carried),
        }


_NO_IDS = np.zeros(0, dtype=np.int64)
_NO_TIMES = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True)
class _Chain:
    """Periodic check-ins: device d checks in at `origin_s + period * (u_d + k)` for every
    integer k, with u_d = `SimClock.checkin_fraction(d, round_id)` (drawn when the chain
    started, in round `round_id`'s selection window opening at `origin_s`)."""

    round_id: int
    origin_s: float


@dataclass(frozen=True)
class _Window:
    """What `select` opened, for `advance` to work out the pool the next window starts with."""

    opens_s: float  # simulated time the round opened
    chain: _Chain | None  # None: it opened at a later step, where every eligible device is in
    pool_ids: npt.NDArray[np.int64]  # the pool handed to the engine
    pool_at: npt.NDArray[np.float64]  # their check-in times (simulated s)
    rest_ids: npt.NDArray[np.int64]  # devices left in the coordinator's pool besides
    rest_at: npt.NDArray[np.float64]
    # With `chain` None: the devices of earlier cohorts not back in the pool when the window
    # opened, and when each checks in again (simulated s), whether or not it was selected now.
    out_ids: npt.NDArray[np.int64] = field(default_factory=lambda: _NO_IDS)
    out_at: npt.NDArray[np.float64] = field(default_factory=lambda: _NO_TIMES)


class SimFleet:
    """A population plus a clock, seeded together.

    `deadline_s` is the reporting deadline of every round, in (0, 604800] s as the
    coordinator's (None: no deadline; a round that cannot fill then ends with the last
    surviving device's report, which no server knows: see `mobile_sim.clock`).
    `dropouts=False` zeroes every tier's dropout probability (timing only, same reports).
    `cost_per_sample` scales the devices' compute speed (measured on the MNIST CNN) to the
    model trained here; `population_kwargs` go to `PopulationConfig` (tiers, day shape).
    `checkin_period_s` is how often an eligible device checks in (`select`: once per period,
    at its own phase, drawn uniformly when a chain of selection windows starts and kept while
    rounds follow one another; 0: devices are in the coordinator's pool the moment they are
    eligible).

    Between rounds the fleet keeps what the coordinator would know at a round's close
    (`advance`): a device still busy with a round (a straggler uploading after the close) does
    not check in until it is done, so no selection takes it before; and after a round `select`
    opened, the devices that checked in while it ran and were not selected are still in the
    pool when the next selection window opens.
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
        # Devices still busy with a round after its close (stragglers still uploading), sorted
        # by index, and the simulated time each is done.
        self._busy_ids = _NO_IDS
        self._busy_until = _NO_TIMES
        # The coordinator's pool at the last close, for the next `select` (set by `advance`):
        # the devices carried into it and their check-in times, in check-in order; or, with
        # `_everyone`, every eligible device not busy, except the last round's cohort (`_skip`,
        # which checks in again over the period from the next window) and the devices of
        # earlier cohorts not back yet (`_out_ids`, checking in again at `_out_at`): the round
        # opened at a later step, where every eligible device has checked in. `_chain`: the
        # check-in phases the next window continues.
        self._carried_ids = _NO_IDS
        self._carried_at = _NO_TIMES
        self._everyone = False
        self._skip = _NO_IDS
        self._out_ids = _NO_IDS
        self._out_at = _NO_TIMES
        self._chain: _Chain | None = None
        self._window: _Window | None = None  # what the last `select` opened, for `advance`

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

    def busy(self, at_s: float | None = None) -> npt.NDArray[np.int64]:
        """Sorted indices of the devices still busy with an earlier round at `at_s` (default:
        now): stragglers whose upload ends after their round's close (`advance`)."""
        t = self.clock.now_s if at_s is None else at_s
        return self._busy_ids[self._busy_until > t]

    def wait_idle(self, n: int) -> npt.NDArray[np.int64]:
        """Every device index not busy with an earlier round, once at least `n` are: the pool
        of a fleet whose devices are all eligible and in the pool the moment they are free
        (`plume sim --fleet timing`). A straggler still uploading its update after its round's
        close has not checked in again, so the coordinator cannot select it. If fewer than `n`
        are free, the clock moves to when enough are, and the wait is counted in `idle_s` and
        the next round's `waited_s` (the coordinator's selection waits too)."""
        if not (_is_int(n) and n >= 1):
            raise ValueError(f"need n >= 1, got {n!r}")
        total = len(self.population)
        now = self.clock.now_s
        ends = np.sort(self._busy_until[self._busy_until > now])
        short = n - (total - ends.size)
        if short > 0 and ends.size:
            self._wait(float(ends[min(short, ends.size) - 1]) - now, 0, 0.0, stepwise=False,
                       count_for_round=True)  # fmt: skip
        everyone = np.arange(total, dtype=np.int64)
        busy = self.busy()
        return everyone if not busy.size else np.setdiff1d(everyone, busy, assume_unique=True)

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
        is added to `idle_s`. A device busy with an earlier round (`busy`) is not eligible.

        With `selection_timeout_s`, the HTTP coordinator's selection rule applies too
        (`coordinator/service/rounds.py`: a round opens with the full cohort, or once the
        selection timeout has passed with at least `min_reports` devices): from the first step
        at least `selection_timeout_s` into the wait, at least `min_n` eligible devices are
        enough.

        If neither happens within `max_wait_s` (a fleet too small to fill the cohort, e.g. 13
        wanted of 10 devices), it returns the largest set it saw, and the clock moves only to
        the first step where that set was seen, not to the end of the window.

        This is `select`'s loop in its coarser, step-by-step form (see `_select`): no check-in
        delays, no pool carried over from the last round, the timeout counted from the start
        of the wait, and no abandoned rounds.
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
        `selection_timeout_s` has passed since the first check-in into an empty pool (or since
        the last round's close, if the pool was not empty then) with at least `min_n`
        (`min_reports`) devices in the pool; below that it keeps waiting. Here:

        - the selection window opens at the current simulated time: the last round's close.
          The pool then holds what it held at that close (`advance`): the devices that checked
          in while that round ran, were not selected and are still eligible (if more than `n`,
          `n` of them, chosen uniformly with `rng`, as the coordinator selects from its pool);
        - every other eligible device checks in once per `checkin_period_s`, at its own phase
          (`SimClock.checkin_fraction`, drawn from (seed, round, device) in the round that
          started the chain of windows, and kept while rounds follow one another; after a
          round that opened at a later step or an abandoned window, a new chain starts), but not
          before it is done with an earlier round (`busy`); so the pool grows one check-in at a
          time and the round opens at the `n`-th (the earliest ones, over the whole fleet), or
          by the timeout rule;
        - availability is looked at again every `step_s` (15 minutes): if the first step does
          not open the round, the pool from then on is every device eligible (and not busy) at
          the latest step (they have all checked in: the period is at most one step), held
          until the next step; a round may open by the timeout rule between steps;
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
        `wait_for` is the step-by-step form of the same loop, which differs in five ways only:

        - no check-in delays: every device eligible at a step is in the pool at that step;
        - no pool carried over from the last round's close;
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
        # What the last close left in the coordinator's pool: taken now, whatever this window
        # does (`wait_for` carries nothing over).
        carried_ids, carried_at, everyone, skip, chain, out_ids, out_at = self._take_pool()
        everyone = everyone and not stepwise
        t0 = self.clock.now_s
        t_step = t0  # the clock after `steps` calls of advance(step_s): `stepwise` looks here
        offset = 0.0  # seconds since the window opened, at the current step
        steps = 0
        first: float | None = None  # offset of the first check-in
        best, best_steps = np.zeros(0, dtype=np.int64), 0  # the largest pool, first seen
        carried = 0  # devices in the pool when the window opened, at the head of `ids`
        rest_ids, rest_at = _NO_IDS, _NO_TIMES  # carried devices left in the pool besides
        while True:
            t = t_step if stepwise else t0 + offset
            step_chain: _Chain | None = None  # the check-in phases this step's draws follow
            if steps == 0 and everyone:
                # The last round opened where every eligible device had checked in: they are
                # all in the pool now, except those still busy, that round's cohort, which
                # checks in again over the period (a new chain of phases), and the devices of
                # earlier cohorts that have not checked in again yet (at their times).
                assert round_id is not None  # `everyone` only for `select`
                out_ids, out_at = self._still_out(out_ids, out_at, skip, t, round_id)
                ids = self._sample(n, t, rng, min_memory_mb, out_ids)
                carried = ids.size
                again, again_at = self._back_first(out_ids, out_at, n - ids.size, t, min_memory_mb)
                times = np.concatenate([np.full(ids.size, offset), offset + (again_at - t)])
                at = np.concatenate([np.full(ids.size, t), again_at])
                ids = np.concatenate([ids, again])
            elif first is None and period > 0:
                assert round_id is not None  # period > 0 only for `select`
                step_chain = chain if steps == 0 and chain is not None else _Chain(round_id, t)
                c_ids, c_at = _NO_IDS, _NO_TIMES
                if steps == 0 and carried_ids.size:
                    c_ids, c_at, rest_ids, rest_at = self._carried_pool(
                        carried_ids, carried_at, n, t, rng, min_memory_mb
                    )
                    carried = c_ids.size
                new_ids, frac = _NO_IDS, _NO_TIMES
                if n > c_ids.size:
                    new_ids, frac = self._earliest_checkins(
                        n - c_ids.size, t, step_chain, min_memory_mb, c_ids
                    )
                ids = np.concatenate([c_ids, new_ids])
                times = np.concatenate([np.full(c_ids.size, offset), offset + period * frac])
                at = np.concatenate([c_at, t + period * frac])
            else:
                ids = self._sample(n, t, rng, min_memory_mb, _NO_IDS)
                times = np.full(ids.size, offset)
                at = np.full(ids.size, t)
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
                    inside = times <= opens
                    pool = ids[inside][:n]
                    self._wait(opens, steps, step_s, stepwise=stepwise, count_for_round=True)
                    if not stepwise:
                        self._window = _Window(
                            t0 + opens, step_chain, pool, at[inside][:n], rest_ids, rest_at,
                            out_ids if steps == 0 and everyone else _NO_IDS,
                            out_at if steps == 0 and everyone else _NO_TIMES,
                        )  # fmt: skip
                    by = "cohort" if pool.size >= n else "timeout"
                    return Selection(pool, by, opens, first, min_n, min(carried, pool.size))
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

    def _take_pool(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], bool, npt.NDArray[np.int64],
               _Chain | None, npt.NDArray[np.int64], npt.NDArray[np.float64]]:  # fmt: skip
        """The pool the last close left (`advance`), emptied: each is used by one window."""
        out = (
            self._carried_ids, self._carried_at, self._everyone, self._skip, self._chain,
            self._out_ids, self._out_at,
        )  # fmt: skip
        self._carried_ids, self._carried_at = _NO_IDS, _NO_TIMES
        self._everyone, self._skip, self._chain = False, _NO_IDS, None
        self._out_ids, self._out_at = _NO_IDS, _NO_TIMES
        self._window = None
        return out

    def _still_out(
        self,
        out_ids: npt.NDArray[np.int64],
        out_at: npt.NDArray[np.float64],
        cohort: npt.NDArray[np.int64],
        sim_time_s: float,
        round_id: int,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """(ids, times) sorted by id: the devices out of an everyone pool at `sim_time_s`,
        and when each checks in again. `cohort` (the last round's) checks in again over the
        period from `sim_time_s`, on a chain started there (a device busy then at its first
        check-in after it is done); of `out_ids`, those whose time has come are back."""
        if cohort.size:
            period = self.checkin_period_s
            at = sim_time_s + period * self._phase(cohort, _Chain(round_id, sim_time_s), sim_time_s)
            done = self._busy_until_of(cohort)
            late = at < done
            at[late] += period * np.ceil((done[late] - at[late]) / period)
            keep = ~np.isin(out_ids, cohort)
            out_ids = np.concatenate([out_ids[keep], cohort])
            out_at = np.concatenate([out_at[keep], at])
        waiting = out_at > sim_time_s
        order = np.argsort(out_ids[waiting], kind="stable")
        return out_ids[waiting][order], out_at[waiting][order]

    def _back_first(
        self,
        out_ids: npt.NDArray[np.int64],
        out_at: npt.NDArray[np.float64],
        n: int,
        sim_time_s: float,
        min_memory_mb: float,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """(ids, times): the first `n` of `out_ids` to check in again (at `out_at`), among
        those eligible at `sim_time_s` (the window's opening, as for every pool device), in
        check-in order."""
        if n <= 0 or not out_ids.size:
            return _NO_IDS, _NO_TIMES
        ok = self._eligible_mask(out_ids, sim_time_s, min_memory_mb)
        ids, at = out_ids[ok], out_at[ok]
        order = np.argsort(at, kind="stable")[:n]
        return ids[order], at[order]

    def _sample(
        self,
        n: int,
        sim_time_s: float,
        rng: np.random.Generator,
        min_memory_mb: float,
        skip: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.int64]:
        """Up to `n` devices eligible at `sim_time_s`, uniformly, leaving out `skip` and the
        devices busy then (`sample_available`)."""
        busy = self.busy(sim_time_s)
        exclude = np.union1d(busy, skip) if skip.size else busy
        return self.population.sample_available(
            n, sim_time_s, rng, min_memory_mb=min_memory_mb,
            exclude=exclude if exclude.size else None,
        )  # fmt: skip

    def _eligible_mask(
        self, ids: npt.NDArray[np.int64], sim_time_s: float, min_memory_mb: float
    ) -> npt.NDArray[np.bool_]:
        prof = self.population.profiles(ids)
        ok: npt.NDArray[np.bool_] = self.population.available_mask(prof, sim_time_s)
        return ok & (prof.memory_mb >= min_memory_mb)

    def _carried_pool(
        self,
        ids: npt.NDArray[np.int64],
        at: npt.NDArray[np.float64],
        n: int,
        sim_time_s: float,
        rng: np.random.Generator,
        min_memory_mb: float,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64],
               npt.NDArray[np.float64]]:  # fmt: skip
        """(ids, times, rest ids, rest times): the carried devices (`ids`, checked in at `at`,
        in check-in order) still eligible at `sim_time_s`, the others having left the pool (a
        phone off its charger stops checking in); when more than `n` are, `n` of them chosen
        uniformly (`rng.choice`, as the coordinator selects from its whole pool), in check-in
        order, and the rest, which stay in the pool."""
        if not ids.size:
            return ids, at, _NO_IDS, _NO_TIMES
        ok = np.concatenate(
            [self._eligible_mask(ids[a : a + _CHUNK], sim_time_s, min_memory_mb)
             for a in range(0, ids.size, _CHUNK)]
        )  # fmt: skip
        ids, at = ids[ok], at[ok]
        if ids.size <= n:
            return ids, at, _NO_IDS, _NO_TIMES
        chosen = np.sort(rng.choice(ids.size, size=n, replace=False))
        stay = np.ones(ids.size, dtype=np.bool_)
        stay[chosen] = False
        return ids[chosen], at[chosen], ids[stay], at[stay]

    def _phase(
        self, device_ids: npt.NDArray[np.int64], chain: _Chain, sim_time_s: float
    ) -> npt.NDArray[np.float64]:
        """float64[n] in [0, 1): when each device next checks in at or after `sim_time_s`
        under `chain`, as a fraction of the period from `sim_time_s`."""
        u = self.clock.checkin_fraction(device_ids, chain.round_id)
        if chain.origin_s == sim_time_s:
            return u
        shift = (chain.origin_s - sim_time_s) / self.checkin_period_s
        out: npt.NDArray[np.float64] = np.mod(u + shift, 1.0)
        return out

    def _busy_until_of(self, device_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """float64[n]: when each device is done with an earlier round (-inf: not busy)."""
        out = np.full(device_ids.size, -np.inf)
        if self._busy_ids.size and device_ids.size:
            pos = np.minimum(np.searchsorted(self._busy_ids, device_ids), self._busy_ids.size - 1)
            hit = self._busy_ids[pos] == device_ids
            out[hit] = self._busy_until[pos[hit]]
        return out

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
        self,
        n: int,
        sim_time_s: float,
        chain: _Chain,
        min_memory_mb: float,
        skip: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """(ids, fractions): the (up to) `n` devices eligible at `sim_time_s`, not in `skip`,
        that check in first (`chain`'s phases) in the period from `sim_time_s`, in check-in
        order, and their check-in times as fractions of the period. A device busy with an
        earlier round at its check-in time does not check in this period. Exact over the whole
        fleet: it hashes every device's draw (block by block, cheap) but builds profiles only
        for devices whose draw is below a threshold `q`, raising `q` until `n` eligible ones
        are found or every device has been looked at."""
        total = len(self.population)
        period = self.checkin_period_s
        q = min(1.0, max(4 * n, 256) / total)
        while True:
            got_ids, got_u = [], []
            for a in range(0, total, _CHUNK):
                ids = np.arange(a, min(a + _CHUNK, total), dtype=np.int64)
                u = self._phase(ids, chain, sim_time_s)
                if q < 1.0:
                    keep = u < q
                    ids, u = ids[keep], u[keep]
                if skip.size:
                    keep = ~np.isin(ids, skip)
                    ids, u = ids[keep], u[keep]
                if self._busy_ids.size:
                    keep = sim_time_s + period * u >= self._busy_until_of(ids)
                    ids, u = ids[keep], u[keep]
                ok = self._eligible_mask(ids, sim_time_s, min_memory_mb)
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
        """Move simulated time past the round; returns the new simulated time (seconds).

        It also notes what the coordinator knows at the round's close, for the next selection:
        which of the round's devices are still busy (a straggler uploads after the close, and
        checks in again only once done), and, after a round that `select` opened, which
        devices are in the pool (those that checked in while the round ran, were not selected
        and were not busy then, besides those left in it when the round opened)."""
        self._waited_s = 0.0
        close = self.clock.advance(timing)
        self._note_busy(timing, close)
        window, self._window = self._window, None
        if window is not None and self.checkin_period_s > 0:
            self._carry(window, timing, close)
        return close

    def _note_busy(self, timing: RoundTiming, close_s: float) -> None:
        """Add the round's stragglers, busy until their upload ends, and forget the devices
        done by `close_s`."""
        ends = timing.start_s + timing.finish_s
        late = np.isfinite(ends) & (ends > close_s)
        still = self._busy_until > close_s
        ids = np.concatenate([self._busy_ids[still], timing.device_ids[late]])
        until = np.concatenate([self._busy_until[still], ends[late]])
        order = np.lexsort((-until, ids))  # by device, the latest end first
        ids, until = ids[order], until[order]
        first = np.ones(ids.size, dtype=np.bool_)
        first[1:] = ids[1:] != ids[:-1]
        self._busy_ids, self._busy_until = ids[first], until[first]

    def _carry(self, window: _Window, timing: RoundTiming, close_s: float) -> None:
        """The pool at the close of the round `window` opened, for the next `select`."""
        cohort = np.unique(timing.device_ids)
        period = self.checkin_period_s
        if window.chain is None or close_s - window.opens_s >= period:
            # Every eligible device has checked in by the close (the round opened at a later
            # step, or lasted a whole period), except this cohort and the devices of earlier
            # cohorts not back yet (helper-410: those rejoined the pool at once, a fraction of
            # a second after their round, and rounds went on opening without a wait).
            self._everyone, self._skip = True, cohort
            back = window.out_at <= close_s
            if window.chain is None and close_s - window.opens_s < period:
                self._out_ids, self._out_at = window.out_ids[~back], window.out_at[~back]
            return
        new_ids, new_at = self._checkins_between(window.chain, window.opens_s, close_s)
        ids = np.concatenate([window.rest_ids, window.pool_ids, new_ids])
        at = np.concatenate([window.rest_at, window.pool_at, new_at])
        keep = ~np.isin(ids, cohort)
        ids, at = ids[keep], at[keep]
        order = np.lexsort((ids, at))  # in check-in order; a device once, its first check-in
        ids, at = ids[order], at[order]
        _, once = np.unique(ids, return_index=True)
        once.sort()
        self._carried_ids, self._carried_at = ids[once], at[once]
        self._chain = window.chain

    def _checkins_between(
        self, chain: _Chain, after_s: float, until_s: float
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """(ids, times): the devices whose next check-in under `chain` after `after_s`, and
        after they are done with an earlier round (`busy`), comes by `until_s` (less than a
        period later), in id order, with that check-in's time. Eligibility is not looked at
        here: `select` looks when it takes them into its pool."""
        total = len(self.population)
        period = self.checkin_period_s
        got_ids, got_at = [], []
        for a in range(0, total, _CHUNK):
            ids = np.arange(a, min(a + _CHUNK, total), dtype=np.int64)
            frac = self._phase(ids, chain, after_s)
            at = after_s + period * frac
            if self._busy_ids.size:
                done = self._busy_until_of(ids)
                late = at < done
                # its check-ins while busy are not seen: the next one after it is done
                at[late] += period * np.ceil((done[late] - at[late]) / period)
            hit = (at > after_s) & (at <= until_s)
            got_ids.append(ids[hit])
            got_at.append(at[hit])
        return np.concatenate(got_ids), np.concatenate(got_at)
