"""After a round that opened at a later step (every eligible device in the pool), the devices
of earlier cohorts check in again at their own times, not at once (stop 48, helper-410's
clock review: only the last cohort was kept out of the next window, so the cohort before it
was back in the pool a fraction of a second after its round, rounds opened without a wait, and
a simulated day ran up to 160x the rounds of the day before at the same availability).
`test_fleet_selection_paths.py` checks the rule against its brute-force reference; this test
checks the symptom."""

from __future__ import annotations

import numpy as np

from mobile_sim.fleet import SimFleet


def test_a_device_is_not_selected_again_a_moment_after_its_round() -> None:
    # Prepare: a small fleet whose first round opens at a later step (selection timeout past
    # the first period), 13 devices a round, rounds of well under a second
    fleet = SimFleet(200, seed=0, deadline_s=60.0, checkin_period_s=900.0)
    last_close: dict[int, float] = {}
    gaps: list[float] = []

    # Execute: two simulated days of rounds
    r = 0
    while fleet.now_s < 2 * 86_400.0 and r < 5_000:
        r += 1
        sel = fleet.select(
            13, np.random.default_rng([0, r]), round_id=r, min_n=1, selection_timeout_s=900.0
        )
        if not sel.opened:
            continue
        opened = fleet.now_s
        gaps += [opened - last_close[d] for d in sel.device_ids.tolist() if d in last_close]
        timing = fleet.time_round(
            r, sel.device_ids, down_bytes=9_640, up_bytes=106, samples=8, epochs=1, per_round=10
        )
        close = fleet.advance(timing)
        last_close.update(dict.fromkeys(timing.device_ids.tolist(), close))

    # Assert: a device checks in again over the period after its round (900 s), so few are
    # picked again within 10 s of it; before, most re-selections were (the cohorts alternated)
    gaps_s = np.array(gaps)
    assert gaps_s.size > 1_000
    assert np.mean(gaps_s < 10.0) < 0.05, np.mean(gaps_s < 10.0)
    # and the rounds of the second day are not a multiple of the first's (before: thousands)
    assert r < 2_000, r
