"""A report that lands exactly at the deadline is a straggler, as the coordinator refuses it
(`coordinator/service/rounds.py`, `submit`: refused at clock() >= deadline). s25/clock
finding 7: the clock kept it (`finish <= deadline_s`)."""

from __future__ import annotations

import numpy as np

from mobile_sim.clock import SimClock
from mobile_sim.population import Population, ProfileBatch


def _cohort() -> tuple[SimClock, ProfileBatch, np.ndarray]:
    pop = Population.build(200, seed=3, availability="always")
    profiles = pop.profiles(np.arange(20, dtype=np.int64))
    clock = SimClock(3)
    t_down, t_comp, t_up = clock.device_times(profiles, 6_653_480, 21_000, 80, 1)
    finish = np.where(clock.dropout_mask(profiles, 1), np.inf, t_down + t_comp + t_up)
    return clock, profiles, finish


def test_a_report_exactly_at_the_deadline_is_a_straggler() -> None:
    # Prepare: the deadline is exactly the finish time of the 4th surviving device to arrive,
    # and the round wants more reports than arrive before it.
    clock, profiles, finish = _cohort()
    alive = np.sort(finish[np.isfinite(finish)])
    deadline = float(alive[3])
    on_the_line = int(np.flatnonzero(finish == deadline)[0])

    # Execute
    timing = clock.plan_round(
        profiles, 6_653_480, 21_000, 80, epochs=1, per_round=10, deadline_s=deadline, round_id=1
    )

    # Assert: the three devices before the deadline are kept; the one landing on it is
    # refused as the coordinator refuses it, and the round waits to its deadline.
    assert timing.kept.size == 3
    assert on_the_line in timing.stragglers.tolist()
    assert on_the_line not in timing.kept.tolist()
    assert timing.duration_s == deadline


def test_a_report_just_before_the_deadline_is_kept() -> None:
    # Prepare: the guard: the deadline a hair after the 4th arrival keeps it.
    clock, profiles, finish = _cohort()
    alive = np.sort(finish[np.isfinite(finish)])
    deadline = float(np.nextafter(alive[3], np.inf))

    # Execute
    timing = clock.plan_round(
        profiles, 6_653_480, 21_000, 80, epochs=1, per_round=10, deadline_s=deadline, round_id=1
    )

    # Assert
    assert timing.kept.size == 4
    assert float(finish[np.isin(np.arange(20), timing.kept)].max()) == float(alive[3])
