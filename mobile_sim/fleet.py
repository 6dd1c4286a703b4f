"""The runner's view of the simulated fleet: who is eligible now, and how long a round takes.

`SimFleet` joins a `Population` (lazy device profiles, diurnal availability) and a `SimClock`
(per-device download + compute + upload times, deadline, over-selection, dropouts) behind the
few calls a round loop needs. Device indices are the runner's client numbers 0..n-1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .clock import RoundTiming, SimClock
from .population import DEFAULT_TIERS, Population, PopulationConfig

__all__ = ["SimFleet", "training_flops_per_sample", "relative_cost", "REFERENCE_FLOPS"]

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
    MNIST CNN (1.0 for it; the digits MLP is about 1.4e-4)."""
    return max(training_flops_per_sample(model, sample_shape), 1) / REFERENCE_FLOPS


class SimFleet:
    """A population plus a clock, seeded together.

    `deadline_s` is the reporting deadline of every round (None: wait for the cohort).
    `dropouts=False` zeroes every tier's dropout probability (timing only, same reports).
    `cost_per_sample` scales the devices' compute speed (measured on the MNIST CNN) to the
    model trained here; `population_kwargs` go to `PopulationConfig` (tiers, day shape).
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
        **population_kwargs: Any,
    ) -> None:
        if not dropouts:
            tiers = population_kwargs.get("tiers", DEFAULT_TIERS)
            population_kwargs["tiers"] = tuple(replace(t, dropout_p=0.0) for t in tiers)
        self.population = Population(
            PopulationConfig(num_devices, seed, availability=availability, **population_kwargs)
        )
        self.clock = SimClock(seed, cost_per_sample=cost_per_sample)
        self.deadline_s = deadline_s
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
        """
        if not (step_s > 0 and math.isfinite(step_s)) or not max_wait_s >= 0:
            raise ValueError(f"need step_s > 0 and max_wait_s >= 0, got {step_s}, {max_wait_s}")
        if selection_timeout_s is not None and not selection_timeout_s >= 0:
            raise ValueError(f"selection_timeout_s must be >= 0, got {selection_timeout_s}")
        if min_n < 1:
            raise ValueError(f"min_n must be >= 1, got {min_n}")
        timeout = math.inf if selection_timeout_s is None else selection_timeout_s
        # Look ahead without moving the clock; times are summed exactly as `advance` sums them,
        # so a wait of k steps ends at the same float time as k calls of `advance(step_s)`.
        t = self.clock.now_s
        waited = 0.0
        steps = 0
        best, best_steps = np.zeros(0, dtype=np.int64), 0
        while True:
            ids = self.population.sample_available(n, t, rng, min_memory_mb=min_memory_mb)
            if ids.size >= n or (waited >= timeout and ids.size >= min_n):
                break
            if steps == 0 or ids.size > best.size:
                best, best_steps = ids, steps
            if waited >= max_wait_s:
                ids, steps = best, best_steps
                break
            t += step_s
            waited += step_s
            steps += 1
        for _ in range(steps):
            self.clock.advance(step_s)
            self.idle_s += step_s
            self._waited_s += step_s
        return ids

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
        profiles = self.population.profiles(np.asarray(device_indices, dtype=np.int64))
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
        profiles = self.population.profiles(np.asarray(device_indices, dtype=np.int64))
        return self.clock.dropout_mask(profiles, round_id)

    def advance(self, timing: RoundTiming) -> float:
        """Move simulated time past the round; returns the new simulated time (seconds)."""
        self._waited_s = 0.0
        return self.clock.advance(timing)
