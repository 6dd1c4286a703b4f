"""Helper-336's and helper-337's reviews of the simulator:

- `plume sim --fleet realistic` where no device is ever eligible (one device that never charges
  on wifi, or a --min-memory-mb above every tier's memory) ended in a traceback
  (`RuntimeError: round 1: no device was eligible ...`). Now one line, exit 1; and a
  --min-memory-mb no device has is refused before anything is loaded.
- `plume sim --secure --transport http --coordinator URL` ignored the URL (the run used its own
  loopback coordinator while rounds.json recorded the URL). Now a usage error.
- Availability missed charging windows with configs `PopulationConfig` accepts: a daytime
  session running past midnight (`day_session_hours` up to 8 h) was cut there, and a large
  `night_jitter_sd_h` moved nights beyond the three looked at. Compared here with a reference
  that looks at every night and session within a week.
- `Population.profiles` of a uint64 id above 2^63 - 1 reported it as -1, `profile("5")` was
  device 5, and `sample_available(min_memory_mb=None)` raised a bare TypeError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim import population as pop
from mobile_sim.population import Population, PopulationConfig, PopulationError
from mobile_sim.runner import SimConfig


def _reference_available(p: Population, ids: np.ndarray, sim_time_s: float) -> np.ndarray:
    """Eligibility by brute force: every night of days d-6..d+6 and every daytime session of
    days d-3..d, with the same per-day draws as `available_mask` (and its jitter clip)."""
    cfg = p.config
    prof = p.profiles(ids)
    t = p.local_hours(prof, sim_time_s)
    day = np.floor(t / 24.0).astype(np.int64)
    out = np.zeros(len(ids), dtype=np.bool_)
    for k in range(-6, 7):
        s = p._day_stream(prof.device_ids, day + k)
        skip = s.uniform(pop._D_SKIP) < cfg.skip_night_p
        jitter = np.clip(cfg.night_jitter_sd_h * s.normal(pop._D_JITTER), -12.0, 12.0)
        start = 24.0 * (day + k) + prof.night_start_h + jitter
        out |= (t >= start) & (t < start + prof.night_hours) & ~skip & prof.home_wifi
    lo, hi = cfg.day_session_hours
    for k in range(-3, 1):
        s = p._day_stream(prof.device_ids, day + k)
        has = s.uniform(pop._D_SESSION) < cfg.day_session_p
        start = 24.0 * (day + k) + 9.0 + 8.0 * s.uniform(pop._D_SESSION_START)
        length = lo + (hi - lo) * s.uniform(pop._D_SESSION_HOURS)
        wifi = s.uniform(pop._D_SESSION_WIFI) < cfg.day_session_wifi_p
        out |= has & wifi & (t >= start) & (t < start + length)
    return out


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"day_session_hours": (7.0, 8.0), "day_session_p": 1.0, "day_session_wifi_p": 1.0},
        {"night_jitter_sd_h": 6.0},
        {"night_jitter_sd_h": 30.0, "night_hours_mean": 12.0},
    ],
    ids=["defaults", "long-day-sessions", "jitter-6h", "jitter-30h"],
)
def test_availability_matches_a_brute_force_reference(over: dict[str, object]) -> None:
    # Prepare: 2,000 devices, every simulated quarter hour of three days
    p = Population(PopulationConfig(2_000, seed=5, **over))  # type: ignore[arg-type]
    ids = np.arange(2_000, dtype=np.int64)
    # Execute and assert
    for step in range(0, 3 * 96):
        when = 900.0 * step
        got = p.is_available(ids, when)
        want = _reference_available(p, ids, when)
        assert np.array_equal(got, want), (step, int((got != want).sum()))


def test_the_default_population_is_unchanged_by_the_jitter_clip() -> None:
    # The clip is never reached at the default spread (Box-Muller stays within 8.6 sigma):
    # the same figure the docs' table gives at 22:00 UTC (15,475 of 50,000 eligible).
    p = Population.build(10**6, 0)
    assert p.available_fraction(2 * 3600.0, sample=50_000, seed=0) == pytest.approx(0.3095)


def test_population_ids_are_reported_as_given() -> None:
    p = Population.build(100, 0)
    with pytest.raises(PopulationError, match=r"got range \[18446744073709551615, "):
        p.profiles(np.array([2**64 - 1], dtype=np.uint64))
    for bad in ["5", 5.0, True]:
        with pytest.raises(PopulationError, match="a device id is an integer"):
            p.profile(bad)  # type: ignore[arg-type]
    assert p.profile(np.int64(5)) == p.profile(5)
    with pytest.raises(PopulationError, match="min_memory_mb must be a number"):
        p.sample_available(3, 0.0, np.random.default_rng(0), min_memory_mb=None)  # type: ignore[arg-type]
    assert len(p.sample_available(3, 0.0, np.random.default_rng(0), min_memory_mb=np.int64(1))) == 3


def test_a_memory_floor_above_every_tier_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(
        ValueError, match=r"above every device's memory \(the largest tier's is 12288 MiB\)"
    ):
        SimConfig(dataset="digits", fleet="realistic", min_memory_mb=12289.0)
    code = plume(
        ["sim", "--dataset", "digits", "--rounds", "1", "--fleet", "realistic",
         "--min-memory-mb", "20000", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "plume sim: error: --min-memory-mb 20000 MiB is above every device's memory (the "
        "largest tier's is 12288 MiB): no device would ever be eligible"
    )
    assert not (tmp_path / "out").exists()


def test_a_fleet_where_no_device_is_ever_eligible_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: seed 11's only device never charges on wifi in two simulated days (helper-337)
    monkeypatch.chdir(tmp_path)
    # (--topk 0.1: no few-kept note before the error line, test_s51_cli_few_kept.py)
    argv = ["sim", "--dataset", "digits", "--clients", "1", "--per-round", "1", "--rounds", "1",
            "--local-epochs", "1", "--fleet", "realistic", "--seed", "11", "--topk", "0.1",
            "--no-progress", "--out", str(tmp_path / "out")]  # fmt: skip
    # Execute
    code = plume(argv)
    # Assert: one line, exit 1, no traceback, and the empty --out made for the run removed
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err == (
        "plume sim: error: round 1: no device was eligible in the simulated wait window (a tiny "
        "or never-available fleet): add devices (--clients), lower --min-memory-mb, or simulate "
        "without availability (--fleet timing)"
    )
    assert not (tmp_path / "out").exists()


def test_secure_http_with_an_external_coordinator_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = plume(
        ["sim", "--secure", "--transport", "http", "--coordinator", "http://127.0.0.1:1",
         "--rounds", "1"]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "plume sim: error: --coordinator runs plain rounds only: a --secure --transport http run "
        "starts its own loopback coordinator (drop --coordinator, or --secure)"
    )
