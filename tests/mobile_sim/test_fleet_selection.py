"""Realistic-mode selection: the coordinator's cohort / timeout / min_reports rule, check-ins."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.cli import main as plume
from mobile_sim.clock import ClockError, SimClock
from mobile_sim.fleet import SimFleet
from mobile_sim.report import table_header, table_row, write_run
from mobile_sim.runner import SimConfig, prepare, run_simulation
from sdk.flat import get_flat_params

PERIOD = 900.0

SMALL = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=60,
    per_round=5,
    rounds=3,
    topk=0.1,
    local_epochs=1,
    batch_size=10,
    lr=0.2,
    partition="iid",
    fleet="realistic",
    over_selection=1.2,
    seed=4,
)


def _checkins(
    fleet: SimFleet, t: float, round_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Brute force over the whole fleet: eligible devices at `t` in check-in order, and their
    check-in delays (seconds)."""
    ids = np.arange(len(fleet.population), dtype=np.int64)
    ok = fleet.population.is_available(ids, t)
    delays = fleet.clock.checkin_delays(ids, round_id, fleet.checkin_period_s)
    order = np.argsort(delays[ok], kind="stable")
    return ids[ok][order], delays[ok][order]


def test_checkin_delays_are_a_seeded_per_device_draw() -> None:
    # Prepare
    ids = np.arange(20_000, dtype=np.int64)
    clock = SimClock(seed=7)

    # Execute
    d1 = clock.checkin_delays(ids, 3, PERIOD)
    again = SimClock(seed=7).checkin_delays(ids[::-1], 3, PERIOD)[::-1]
    other_round = clock.checkin_delays(ids, 4, PERIOD)
    other_seed = SimClock(seed=8).checkin_delays(ids, 3, PERIOD)

    # Assert: a pure function of (seed, round, device), uniform over one period.
    np.testing.assert_array_equal(d1, again)
    assert not np.array_equal(d1, other_round) and not np.array_equal(d1, other_seed)
    assert d1.min() >= 0 and d1.max() < PERIOD
    assert abs(d1.mean() - PERIOD / 2) < 0.01 * PERIOD
    assert abs(np.corrcoef(d1, other_round)[0, 1]) < 0.03
    with pytest.raises(ClockError, match="period_s"):
        clock.checkin_delays(ids, 3, -1.0)


@pytest.mark.parametrize("devices", [400, 5_000])  # 5,000: the threshold search over hashes
def test_round_opens_at_the_cohorts_last_checkin(devices: int) -> None:
    # Prepare: enough devices are eligible at the start (00:00 UTC) to fill the cohort.
    fleet = SimFleet(devices, seed=1, checkin_period_s=PERIOD)
    order, delays = _checkins(fleet, 0.0, round_id=1)
    assert order.size > 13

    # Execute
    sel = fleet.select(13, np.random.default_rng(0), round_id=1, min_n=3, selection_timeout_s=None)

    # Assert: the pool is the 13 eligible devices that checked in first, over the whole fleet,
    # and the clock stands at the 13th check-in; that wait is the round's waited_s.
    assert sel.opened and sel.opened_by == "cohort"
    np.testing.assert_array_equal(sel.device_ids, order[:13])
    assert sel.waited_s == fleet.now_s == fleet.idle_s == delays[12] > 0
    assert sel.first_checkin_s == delays[0]
    timing = fleet.time_round(
        1, sel.device_ids, down_bytes=1000, up_bytes=100, samples=10, epochs=1, per_round=10
    )
    assert timing.waited_s == timing.start_s == delays[12]


def test_timeout_opens_with_the_checked_in_pool_if_it_holds_min_reports() -> None:
    # Prepare: 60 devices, 30 wanted; few are eligible, so the cohort never fills in the first
    # period. The coordinator opens once selection_timeout_s has passed since the first
    # check-in, if at least min_reports devices are in the pool.
    fleet = SimFleet(60, seed=4, checkin_period_s=PERIOD)
    order, delays = _checkins(fleet, 0.0, round_id=1)
    assert 3 <= order.size < 30
    timeout = 300.0
    opens = max(delays[0] + timeout, delays[2])
    expected = order[delays <= opens]

    # Execute
    sel = fleet.select(
        30, np.random.default_rng(0), round_id=1, min_n=3, selection_timeout_s=timeout
    )

    # Assert
    assert sel.opened_by == "timeout" and sel.opened
    np.testing.assert_array_equal(sel.device_ids, expected)
    assert 3 <= sel.device_ids.size < 30
    assert fleet.now_s == sel.waited_s == opens


def test_below_min_reports_at_the_timeout_the_pool_keeps_gathering() -> None:
    # Prepare: the timeout passes when fewer than min_reports have checked in; the coordinator
    # keeps waiting and opens at the check-in that brings the pool to min_reports.
    fleet = SimFleet(60, seed=4, checkin_period_s=PERIOD)
    order, delays = _checkins(fleet, 0.0, round_id=1)
    min_n = order.size  # every eligible device is needed
    assert delays[min_n - 1] > delays[0] + 10.0

    # Execute
    sel = fleet.select(
        30, np.random.default_rng(0), round_id=1, min_n=min_n, selection_timeout_s=10.0
    )

    # Assert
    assert sel.opened_by == "timeout"
    assert fleet.now_s == delays[min_n - 1]
    np.testing.assert_array_equal(sel.device_ids, order)


def test_a_pool_that_never_reaches_min_reports_is_abandoned_and_retried() -> None:
    # Prepare: all 20 devices must be eligible at once, which they never are.
    fleet = SimFleet(20, seed=0, checkin_period_s=PERIOD)

    # Execute
    sel = fleet.select(20, np.random.default_rng(0), round_id=1, min_n=20, selection_timeout_s=0)

    # Assert: no round opens; the whole two-day window passed; it is not the next round's wait.
    assert not sel.opened and sel.opened_by == "abandoned"
    assert 0 < sel.device_ids.size < 20
    assert sel.waited_s == fleet.now_s == fleet.idle_s == 2 * 86_400.0
    retry = fleet.select(5, np.random.default_rng(1), round_id=2, min_n=1)
    timing = fleet.time_round(
        2, retry.device_ids, down_bytes=1000, up_bytes=100, samples=10, epochs=1, per_round=5
    )
    assert timing.waited_s == retry.waited_s < 2 * 86_400.0
    with pytest.raises(ValueError, match="min_n"):
        fleet.select(5, np.random.default_rng(0), round_id=3, min_n=6)


def test_no_checkin_period_is_the_step_by_step_wait() -> None:
    # Prepare: with instant check-ins and no timeout, selection is the old wait for the cohort.
    a = SimFleet(2_000, seed=1)
    b = SimFleet(2_000, seed=1)
    a.clock.advance(12 * 3600.0)
    b.clock.advance(12 * 3600.0)

    # Execute
    sel = a.select(400, np.random.default_rng(5), round_id=1)
    ids = b.wait_for(400, np.random.default_rng(5))

    # Assert
    np.testing.assert_array_equal(sel.device_ids, ids)
    assert a.now_s == pytest.approx(b.now_s, rel=0, abs=1e-6) and a.now_s > 12 * 3600.0
    with pytest.raises(ValueError, match="step_s"):
        SimFleet(10, checkin_period_s=1000.0).select(3, np.random.default_rng(0), round_id=1)


def test_checkin_delay_adds_to_simulated_time_reproducibly() -> None:
    # Prepare + Execute: the same seeded run with and without check-in delays.
    with_delay = run_simulation(SMALL, progress=False)
    again = run_simulation(SMALL, progress=False)
    instant = run_simulation(replace(SMALL, checkin_period_s=0.0), progress=False)

    # Assert: each round's wait is reproducible, and check-ins cost simulated time.
    waits = [r.wait_s for r in with_delay.records]
    assert waits == [r.wait_s for r in again.records]
    np.testing.assert_array_equal(with_delay.final_params, again.final_params)
    assert all(w is not None and w > 0 for w in waits)
    assert sum(r.wait_s or 0.0 for r in instant.records) < sum(w or 0.0 for w in waits)
    for r in with_delay.records:
        clock, sel = r.measurements["clock"], r.measurements["selection"]
        assert clock["waited_s"] == r.wait_s == sel["waited_s"]
        assert sel["opened_by"] in ("cohort", "timeout") and sel["pool"] == clock["selected"]
        assert sel["pool"] >= SMALL.min_reports


def test_abandoned_selections_are_reported_rounds(tmp_path: Path) -> None:
    # Prepare: 20 devices, all 20 needed (min_reports = per_round = cohort): never eligible at
    # once, so each round's selection is abandoned after the two-day window.
    cfg = replace(SMALL, clients=20, per_round=20, min_reports=20, over_selection=1.0, rounds=2)

    # Execute
    res = run_simulation(cfg, progress=False)
    paths = write_run(res, tmp_path)

    # Assert: two abandoned rounds, nobody trained, no bytes, the model unchanged.
    init = get_flat_params(prepare(cfg).model)
    assert [r.round for r in res.records] == [1, 2]
    for r in res.records:
        assert not r.committed and r.reports == 0 and r.bytes_up == r.bytes_down == 0
        assert r.wait_s == 2 * 86_400.0 and r.sim_s == 0.0
        assert "below min_reports 20" in r.measurements["abandoned"]
        assert r.measurements["selection"]["opened_by"] == "abandoned"
        assert table_row(r).split()[0] == f"{r.round}*"
    np.testing.assert_array_equal(res.final_params, init)
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"]["wait_s"] == 4 * 86_400.0


def test_waiting_shows_in_the_table_csv_and_json(tmp_path: Path) -> None:
    # Prepare + Execute
    res = run_simulation(replace(SMALL, rounds=2), progress=False)
    paths = write_run(res, tmp_path)

    # Assert
    assert table_header().split("\n")[0].endswith("wait s")
    for r in res.records:
        assert r.wait_s is not None
        assert table_row(r).split()[-1] == f"{r.wait_s:.1f}"
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [float(row["wait_s"]) for row in rows] == [r.wait_s for r in res.records]
    doc = json.loads(paths["json"].read_text())
    assert [row["wait_s"] for row in doc["rounds"]] == [r.wait_s for r in res.records]
    assert math.isclose(doc["summary"]["wait_s"], sum(r.wait_s or 0.0 for r in res.records))
    off = run_simulation(replace(SMALL, rounds=1, fleet="off"), progress=False)
    assert off.records[0].wait_s is None and table_row(off.records[0]).split()[-1] == "-"


def test_cli_flags_reach_the_selection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = plume(
        [
            "sim",
            "--dataset",
            "digits",
            "--clients",
            "60",
            "--per-round",
            "5",
            "--rounds",
            "1",
            "--local-epochs",
            "1",
            "--fleet",
            "realistic",
            "--selection-timeout",
            "-1",
            "--checkin-period",
            "300",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )

    # Assert
    assert code == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["config"]["selection_timeout_s"] is None
    assert doc["config"]["checkin_period_s"] == 300.0
    assert doc["rounds"][0]["measurements"]["selection"]["opened_by"] == "cohort"
    assert "waiting" in capsys.readouterr().out
    with pytest.raises(ValueError, match="checkin_period_s"):
        replace(SMALL, checkin_period_s=1800.0)
    with pytest.raises(ValueError, match="selection_timeout_s"):
        replace(SMALL, selection_timeout_s=-1.0)


def test_selection_in_a_million_device_fleet_stays_lazy() -> None:
    # Prepare
    import tracemalloc

    fleet = SimFleet(1_000_000, seed=0, checkin_period_s=PERIOD)
    tracemalloc.start()

    # Execute
    sel = fleet.select(1_300, np.random.default_rng(0), round_id=1, selection_timeout_s=PERIOD)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Assert: the earliest 1,300 check-ins of 10^6 devices, found block by block (a profile
    # batch per block of candidates, no per-device objects).
    assert sel.opened_by == "cohort" and np.unique(sel.device_ids).size == 1_300
    assert fleet.population.is_available(sel.device_ids, 0.0).all()
    delays = fleet.clock.checkin_delays(sel.device_ids, 1, PERIOD)
    assert np.all(np.diff(delays) >= 0) and delays[-1] == sel.waited_s < 60.0
    assert peak < 32e6


def test_without_a_timeout_a_cohort_that_never_fills_is_abandoned() -> None:
    # Prepare: 20 devices, a cohort of 20, min_reports 1 but no selection timeout: the pool
    # has devices but the round may only open with all 20, which never happens.
    cfg = replace(
        SMALL, clients=20, per_round=20, over_selection=1.0, rounds=1, selection_timeout_s=None
    )

    # Execute
    res = run_simulation(cfg, progress=False)

    # Assert
    (rec,) = res.records
    assert not rec.committed and rec.reports == 0 and rec.wait_s == 2 * 86_400.0
    assert "short of the cohort of 20, with no selection timeout" in rec.measurements["abandoned"]
