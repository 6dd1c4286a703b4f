"""Availability against closed forms of the rules docs/simulator.md states ("What a device
has"): a device is eligible only while charging on unmetered wifi; its overnight charge starts
at its local `night_start_h` and lasts `night_hours` (jittered night to night, skipped on some
nights) and counts only with home wifi; a daytime session of U(lo, hi) hours starts U(09, 17)
local on some days, on wifi with its own probability; local time is simulated time from
`start_hour_utc` plus the device's whole-hour time zone.

With the jitter and the skipped nights switched off, whether device i is in a night at time t
is a closed form of its profile: ((local hour - night_start) mod 24) < night_hours. The tests
compare `available_mask` with it, at times that put nights across midnight on either side, and
check the daytime sessions' coverage against its exact probability."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mobile_sim.population import Population, PopulationError

N = 20_000
Z = 5.0  # standard errors allowed for a share


def _share_ok(got: float, p: float, n: int) -> None:
    assert abs(got - p) <= Z * math.sqrt(p * (1 - p) / n) + 1e-12, (got, p)


@pytest.mark.parametrize(
    ("night_start_mean_h", "start_hour_utc"), [(22.5, 20.0), (0.3, 0.0), (23.7, -5.0)]
)
def test_nights_are_the_closed_form_window(
    night_start_mean_h: float, start_hour_utc: float
) -> None:
    # Prepare: no jitter, no skipped night, no daytime session; starts spread around midnight
    pop = Population.build(
        N,
        seed=4,
        night_start_mean_h=night_start_mean_h,
        night_start_sd_h=2.0,
        night_jitter_sd_h=0.0,
        skip_night_p=0.0,
        day_session_p=0.0,
        start_hour_utc=start_hour_utc,
        tz_sigma_h=3.0,
    )
    prof = pop.profiles(np.arange(N, dtype=np.int64))

    for t in np.linspace(0.0, 3 * 86_400.0, 37)[1:]:
        # Execute
        got = pop.available_mask(prof, float(t))

        # Assert
        local = start_hour_utc + t / 3600.0 + prof.tz_offset_h
        inside = np.mod(local - prof.night_start_h, 24.0) < prof.night_hours
        want = inside & prof.home_wifi
        assert int((got != want).sum()) == 0, t
    assert np.all(pop.local_hours(prof, 7200.0) == start_hour_utc + 2.0 + prof.tz_offset_h)


def test_time_zones_are_whole_hours_and_shift_the_night() -> None:
    # Prepare: every night 22:00-06:00 local, never skipped; zones N(0, 3) rounded
    pop = Population.build(
        N,
        seed=5,
        night_start_sd_h=0.0,
        night_start_mean_h=22.0,
        night_hours_mean=8.0,
        night_hours_sd=0.0,
        night_jitter_sd_h=0.0,
        skip_night_p=0.0,
        day_session_p=0.0,
        start_hour_utc=0.0,
        tz_sigma_h=3.0,
    )
    prof = pop.profiles(np.arange(N, dtype=np.int64))
    tz = prof.tz_offset_h

    # Execute: at 21:30 UTC a device is in its night iff its zone is +1 to +8
    at = pop.available_mask(prof, 21.5 * 3600.0)

    # Assert
    assert np.all(tz == np.round(tz)) and tz.min() >= -12 and tz.max() <= 14
    np.testing.assert_array_equal(at, prof.home_wifi & (tz >= 1) & (tz <= 8))


@pytest.mark.parametrize(
    ("hours", "local_h", "p_covered"),
    [
        ((2.0, 2.0), 8.9, 0.0),  # before any session starts
        ((2.0, 2.0), 10.0, 1 / 8),  # start in [9, 10)
        ((2.0, 2.0), 13.0, 2 / 8),  # start in (11, 13]
        ((2.0, 2.0), 18.0, 1 / 8),  # start in (16, 17)
        ((2.0, 2.0), 19.1, 0.0),  # every session over
        ((7.5, 7.5), 24.25, 0.25 / 8),  # yesterday's session runs past midnight
        ((7.5, 7.5), 24.6, 0.0),  # ... and is over by 00:30
        ((1.0, 3.0), 12.0, 2 / 8),  # mean length 2 h
    ],
)
def test_daytime_sessions_cover_their_exact_share(
    hours: tuple[float, float], local_h: float, p_covered: float
) -> None:
    # Prepare: one time zone, no nights; every day has a session, every session on wifi
    pop = Population.build(
        N,
        seed=6,
        tz_sigma_h=0.0,
        start_hour_utc=0.0,
        skip_night_p=1.0,
        day_session_p=1.0,
        day_session_wifi_p=1.0,
        day_session_hours=hours,
    )

    # Execute
    frac = pop.available_fraction(local_h * 3600.0, sample=N)

    # Assert: P(start <= t < start + L), start ~ U(9, 17), L ~ U(lo, hi), whatever home wifi
    _share_ok(frac, p_covered, N)


def test_daytime_sessions_need_their_draws() -> None:
    # Prepare: sessions on 0 % of days, or never on wifi
    common: dict[str, Any] = {"tz_sigma_h": 0.0, "start_hour_utc": 0.0, "skip_night_p": 1.0}
    none = Population.build(N, seed=6, day_session_p=0.0, **common)
    no_wifi = Population.build(N, seed=6, day_session_wifi_p=0.0, **common)
    half = Population.build(N, seed=6, day_session_p=1.0, day_session_wifi_p=0.5, **common)

    # Execute/Assert: at 13:00 a session of 0.5-2.5 h covers 1.5/8 of devices with one
    for pop, p in ((none, 0.0), (no_wifi, 0.0), (half, 0.5 * 1.5 / 8)):
        _share_ok(pop.available_fraction(13 * 3600.0, sample=N), p, N)


def test_a_skipped_night_is_not_eligible_and_nights_need_home_wifi() -> None:
    # Prepare: nights 22:30-06:00 for everyone, sessions off
    base: dict[str, Any] = {
        "tz_sigma_h": 0.0,
        "start_hour_utc": 0.0,
        "night_start_sd_h": 0.0,
        "night_hours_sd": 0.0,
        "night_jitter_sd_h": 0.0,
        "day_session_p": 0.0,
    }
    every = Population.build(N, seed=8, skip_night_p=0.0, **base)
    never = Population.build(N, seed=8, skip_night_p=1.0, **base)
    prof = every.profiles(np.arange(N, dtype=np.int64))

    # Execute / Assert: at 02:00 exactly the home-wifi devices are eligible, or none
    np.testing.assert_array_equal(every.available_mask(prof, 2 * 3600.0), prof.home_wifi)
    assert not never.available_mask(prof, 2 * 3600.0).any()
    # the window is [start, start + hours): 22:30 in, 06:00 out
    assert every.available_mask(prof, 22.5 * 3600.0).tolist() == prof.home_wifi.tolist()
    assert not every.available_mask(prof, 30.0 * 3600.0).any()
    assert not every.available_mask(prof, 22.5 * 3600.0 - 1e-6).any()


def test_always_is_every_device_at_every_time() -> None:
    pop = Population.build(1_000, seed=1, availability="always")
    assert pop.is_available(np.arange(1_000), 13.0 * 3600.0).all()
    assert pop.available_fraction(0.0) == 1.0
    with pytest.raises(PopulationError, match="sim_time_s"):
        pop.is_available(np.arange(3), -1.0)


@pytest.mark.parametrize("total", [5_000, 1_000_000])
def test_sample_available_is_uniform_among_the_eligible(total: int) -> None:
    # Prepare: a small fleet (scanned whole) and a large one (rejection-sampled)
    pop = Population.build(total, seed=2)
    t = 6 * 3600.0
    exclude = np.arange(0, 2_000, 3)

    # Execute
    ids = pop.sample_available(
        300, t, np.random.default_rng(1), min_memory_mb=4096.0, exclude=exclude
    )

    # Assert: distinct, eligible, with the memory, not excluded; the same generator repeats it
    assert ids.size == 300 == np.unique(ids).size
    prof = pop.profiles(ids)
    assert pop.available_mask(prof, t).all()
    assert (prof.memory_mb >= 4096.0).all()
    assert not np.isin(ids, exclude).any()
    again = pop.sample_available(
        300, t, np.random.default_rng(1), min_memory_mb=4096.0, exclude=exclude
    )
    np.testing.assert_array_equal(ids, again)
    # uniform over ids: the ids' mean is near the fleet's middle
    assert abs(float(ids.mean()) / total - 0.5) < 5 * math.sqrt(1 / 12 / 300)


def test_sample_available_returns_all_when_fewer_are_eligible() -> None:
    # Prepare: at 12:00 UTC few of 3,000 devices are eligible
    pop = Population.build(3_000, seed=3)
    t = 16 * 3600.0
    eligible = np.flatnonzero(pop.is_available(np.arange(3_000), t))

    # Execute
    ids = pop.sample_available(3_000, t, np.random.default_rng(0))

    # Assert
    assert 0 < eligible.size < 3_000
    assert sorted(ids.tolist()) == eligible.tolist()
    assert pop.sample_available(0, t, np.random.default_rng(0)).size == 0
