"""A device still busy with the previous round (a straggler uploading after the close) is not
selected again until it is done: the coordinator does not see it check in (s25/clock finding
4). Before, `SimFleet.select` and `wait_for` never excluded it and `plume sim --fleet timing`
picked from every device, timing it as if idle from the new round's opening."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from mobile_sim.clock import RoundTiming
from mobile_sim.fleet import SimFleet
from mobile_sim.runner import SimConfig, run_simulation
from tests.mobile_sim.test_s64a_ookla_bandwidth import EARLIER_TIERS

# A straggler's upload ends after the round's close: busy until its round's start + finish.


def _busy_after(timing: RoundTiming) -> dict[int, float]:
    ends = timing.start_s + timing.finish_s
    close = timing.start_s + timing.duration_s
    return {
        int(d): float(e) for d, e in zip(timing.device_ids, ends, strict=True) if close < e < np.inf
    }


def _rounds(fleet: SimFleet, pick: str, down_bytes: int = 6_653_480) -> tuple[int, int]:
    """(stragglers still busy at a later opening, of them selected again while busy) over 10
    rounds of 13 selected, 10 kept."""
    busy: dict[int, float] = {}
    still_busy = reselected = 0
    for r in range(1, 11):
        rng = np.random.default_rng(r)
        if pick == "select":
            ids = fleet.select(13, rng, round_id=r, min_n=1, selection_timeout_s=900.0).device_ids
        else:
            ids = fleet.wait_for(13, rng, selection_timeout_s=900.0)
        now = fleet.now_s
        busy_now = {d for d, end in busy.items() if end > now}
        still_busy += len(busy_now)
        reselected += len(busy_now & set(ids.tolist()))
        timing = fleet.time_round(
            r, ids, down_bytes=down_bytes, up_bytes=21_000, samples=80, epochs=1, per_round=10
        )
        busy = {d: e for d, e in busy.items() if e > now} | _busy_after(timing)
        fleet.advance(timing)
    return still_busy, reselected


def test_select_never_takes_a_device_still_uploading_the_last_round() -> None:
    # Prepare: the reviewer's busy_reselected.py: 30 devices always available, instant
    # check-ins, 13 selected for 10 reports, a 60 s deadline (9 busy devices were selected
    # over rounds 2-10 before).
    fleet = SimFleet(30, seed=1, availability="always", deadline_s=60.0, checkin_period_s=0.0)

    # Execute
    still_busy, reselected = _rounds(fleet, "select")

    # Assert: stragglers were still uploading at later openings, and none was selected.
    assert still_busy >= 5
    assert reselected == 0


def test_wait_for_never_takes_a_device_still_uploading_the_last_round() -> None:
    # Prepare
    fleet = SimFleet(30, seed=1, availability="always", deadline_s=60.0)

    # Execute
    still_busy, reselected = _rounds(fleet, "wait_for")

    # Assert
    assert still_busy >= 5
    assert reselected == 0


def test_select_with_check_ins_skips_a_check_in_that_falls_while_busy() -> None:
    # Prepare: check-ins over 15 minutes and a 300 MB model, so that stragglers upload long
    # after the close: a busy device's check-in before it is done is not seen. On the earlier
    # tiers' slower links (before Ookla's medians, 2026-12-07): EARLIER_TIERS.
    fleet = SimFleet(
        30,
        seed=3,
        availability="always",
        deadline_s=3600.0,
        checkin_period_s=900.0,
        tiers=EARLIER_TIERS,
    )

    # Execute
    still_busy, reselected = _rounds(fleet, "select", down_bytes=300_000_000)

    # Assert
    assert still_busy >= 10
    assert reselected == 0


def test_wait_idle_waits_for_the_cohort_to_be_free() -> None:
    # Prepare: 13 devices, all selected, 10 reports kept: 3 are still uploading at the close.
    fleet = SimFleet(13, seed=0, availability="always", dropouts=False)
    ids = fleet.wait_idle(13)
    timing = fleet.time_round(
        1, ids, down_bytes=6_653_480, up_bytes=21_000, samples=80, epochs=1, per_round=10
    )
    fleet.advance(timing)
    busy = _busy_after(timing)
    close = fleet.now_s

    # Execute: 10 free now; 13 only once the last straggler is done.
    free_now = fleet.wait_idle(10)
    at_close = fleet.now_s
    everyone = fleet.wait_idle(13)

    # Assert
    assert len(busy) == 3
    assert at_close == close  # 10 were free: no wait
    assert set(free_now.tolist()) == set(range(13)) - set(busy)
    assert fleet.now_s == max(busy.values()) > close
    assert everyone.tolist() == list(range(13))
    second = fleet.time_round(
        2, everyone, down_bytes=6_653_480, up_bytes=21_000, samples=80, epochs=1, per_round=10
    )
    assert second.waited_s == max(busy.values()) - close  # the round's wait says so


TIMING = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=20,
    per_round=10,
    over_selection=1.3,
    rounds=3,
    topk=0.1,
    bits=4,
    local_epochs=1,
    batch_size=10,
    lr=0.2,
    partition="iid",
    fleet="timing",
)


def test_plume_sim_timing_fleet_selects_from_the_devices_not_still_uploading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: keep each round's timing, to know which devices are still uploading when the
    # next round opens.
    timings: list[RoundTiming] = []
    real = SimFleet.time_round

    def spy(self: SimFleet, *args: Any, **kwargs: Any) -> RoundTiming:
        timing = real(self, *args, **kwargs)
        timings.append(timing)
        return timing

    monkeypatch.setattr(SimFleet, "time_round", spy)

    # Execute: 13 of 20 selected each round, 10 kept; a timing round opens at the last one's
    # close, when its 3 stragglers are still uploading.
    res = run_simulation(TIMING, progress=False)

    # Assert: round 1 selects from all 20, round 2 from the 17 free (before: 20 each), and
    # every round from the devices not still uploading at its opening: round 3 from 16 since
    # the Ookla-calibrated defaults (2026-12-07), one of round 1's stragglers being still busy.
    stragglers = [r.measurements["clock"]["stragglers"] for r in res.records]
    assert stragglers[:2] == [3, 3]
    assert [r.available for r in res.records][:2] == [20, 17]
    assert len(timings) == len(res.records) == 3
    busy: dict[int, float] = {}
    for rec, timing in zip(res.records, timings, strict=True):
        busy = {d: e for d, e in busy.items() if e > timing.start_s}
        assert rec.available == TIMING.clients - len(busy), rec.round
        busy |= _busy_after(timing)
    assert all(r.available < TIMING.clients for r in res.records[1:])
    assert all(r.wait_s == 0.0 for r in res.records)
    down = {
        r: {
            row.device_id
            for row in res.ledger.rows()
            if row.direction == "down" and row.round_id == r
        }
        for r in (1, 2)
    }
    up = {row.device_id for row in res.ledger.rows() if row.direction == "up" and row.round_id == 1}
    assert not (down[1] - up) & down[2]  # no round-1 straggler in round 2


def test_a_timing_run_without_stragglers_selects_as_before() -> None:
    # Prepare / Execute: no over-selection, no deadline: every device reports, nobody is busy.
    res = run_simulation(replace(TIMING, over_selection=1.0), progress=False)

    # Assert: every round selects from the whole fleet, as before the change.
    assert [r.available for r in res.records] == [20, 20, 20]
