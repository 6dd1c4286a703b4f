"""mobile_sim/population.py pinned where a mutation left the other population tests passing
(helper s67c's mutation pass, stop 67): each test kills at least one mutant, against figures
derivable by hand or from docs/simulator.md ("What a device has"), or statistics computed here
over a seeded draw with a tolerance of Z standard errors at its sample size (Z = 5, as in
test_s54l_population_doc.py: a correct model fails a given check with probability below 1e-6,
and the draws are seeded, so a pass or a failure is deterministic).

Standard errors: a share p of n draws, sqrt(p (1 - p) / n); the median of n normal draws with
sd s, s sqrt(pi / 2) / sqrt(n); the sd of n normal draws, s / sqrt(2 (n - 1)).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mobile_sim.population import (
    DEFAULT_TIERS,
    Population,
    PopulationConfig,
    PopulationError,
    Tier,
    TierSpec,
)
from mobile_sim.traces import CapacityTrace, load_behaviour_trace

from .test_s60d_availability import Z, _share_ok

LOW, MID, HIGH = DEFAULT_TIERS


# One tier whose four log-normal attributes all have different medians and sigmas (the default
# tiers give download and upload the same sigma, so a mix-up between them went unseen).
_ODD_TIER = TierSpec(
    MID.tier,
    share=1.0,
    compute_median_sps=50.0,
    compute_sigma=0.2,
    down_median_mbps=20.0,
    down_sigma=0.9,
    up_median_mbps=3.0,
    up_sigma=0.4,
    latency_median_ms=80.0,
    latency_sigma=0.65,
    dropout_p=0.05,
    memory_gb=(4.0,),
    home_wifi_p=0.5,
)


@pytest.mark.parametrize(
    ("attr", "median", "sigma"),
    [
        ("compute_sps", 50.0, 0.2),
        ("down_bps", 20e6, 0.9),
        ("up_bps", 3e6, 0.4),
        ("latency_s", 0.080, 0.65),
    ],
)
def test_each_lognormal_attribute_takes_its_own_median_and_sigma(
    attr: str, median: float, sigma: float
) -> None:
    # Prepare: 40,000 devices of the one tier
    n = 40_000
    pop = Population(PopulationConfig(n, seed=67, tiers=(_ODD_TIER,)))
    # Execute
    logs = np.log(getattr(pop.profiles(np.arange(n)), attr))
    # Assert: log X ~ N(log median, sigma)
    assert abs(np.median(logs) - math.log(median)) <= Z * sigma * math.sqrt(math.pi / 2 / n)
    assert abs(logs.std(ddof=1) - sigma) <= Z * sigma / math.sqrt(2 * (n - 1))


# --- the hash: SplitMix64 (docs/simulator.md, "Lazy and reproducible") ----------------------

# SplitMix64 seeded with 0: its k-th output is the finaliser applied to k x 0x9E3779B97F4A7C15
# (mod 2^64). These are the published reference outputs of Vigna's splitmix64.c for seed 0.
_SPLITMIX64_SEED0 = (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC)


def test_the_finaliser_is_splitmix64_value_for_value() -> None:
    from mobile_sim.population import _fmix, _fmix_int

    golden = 0x9E3779B97F4A7C15
    states = [k * golden for k in range(1, 5)]  # k >= 2 exceeds 2^64: reduced modulo it
    # the scalar one (the seed's key), and the vectorised one (every draw)
    assert [_fmix_int(s) for s in states] == list(_SPLITMIX64_SEED0)
    got = _fmix(np.array([s % 2**64 for s in states], dtype=np.uint64))
    assert got.tolist() == list(_SPLITMIX64_SEED0)


def test_uniforms_are_strictly_inside_0_1() -> None:
    # 53 high bits plus half an ulp: the lowest and highest hashes map to 2^-54 and 1 - 2^-54,
    # so log(u) in Box-Muller is finite (u = 0 gave an infinite normal: an infinite or zero
    # speed) and a share p draws u < p with probability p exactly on the 2^-53 grid.
    from mobile_sim.population import _uniform

    ends = _uniform(np.array([0, 2**11 - 1, 2**64 - 1], dtype=np.uint64))
    assert ends.tolist() == [2.0**-54, 2.0**-54, 1.0 - 2.0**-54]


# --- time zones: round(N(0, sigma)) clipped to [-12, +14] -----------------------------------


def test_time_zones_are_rounded_and_clipped_to_minus_12_and_plus_14() -> None:
    # Prepare: a spread wide enough to reach both clips (the default 2 h never does)
    n, sigma = 40_000, 20.0
    pop = Population.build(n, seed=67, tz_sigma_h=sigma)
    # Execute
    tz = pop.profiles(np.arange(n)).tz_offset_h
    # Assert: whole hours in [-12, 14]; round(x) = 14 for x >= 13.5 and -12 for x < -11.5, so
    # each clip holds the normal's tail beyond it, and 0 holds N(0, sigma) in [-0.5, 0.5).
    assert tz.min() == -12.0 and tz.max() == 14.0
    assert np.all(tz == np.round(tz))

    def tail(x: float) -> float:
        return 0.5 * math.erfc(x / sigma / math.sqrt(2))

    _share_ok(float(np.mean(tz == 14.0)), tail(13.5), n)
    _share_ok(float(np.mean(tz == -12.0)), tail(11.5), n)
    _share_ok(float(np.mean(tz == 0.0)), 1 - 2 * tail(0.5), n)
    _share_ok(float(np.mean(tz == 1.0)), tail(0.5) - tail(1.5), n)
    _share_ok(float(np.mean(tz == -1.0)), tail(0.5) - tail(1.5), n)


# --- the fleet's eligible fraction -------------------------------------------------------------


def test_available_fraction_samples_distinct_devices() -> None:
    # Prepare: 1,000 devices; the fraction over all of them, at 02:00 UTC (about 60 %)
    pop = Population.build(1_000, seed=67)
    t = 6 * 3600.0
    everyone = float(pop.is_available(np.arange(1_000), t).mean())
    assert everyone == pop.available_fraction(t, sample=1_000)
    # Execute: 999 of the 1,000
    got = pop.available_fraction(t, sample=999, seed=3)
    # Assert: leaving one device out moves a mean of 0s and 1s by at most 1/999 (drawn with
    # replacement, the estimate's own standard error is sqrt(0.24 / 999), about 0.015)
    assert abs(got - everyone) <= 1 / 999


# --- trace entries: uniform over [0, n) ------------------------------------------------------


@pytest.mark.parametrize("entries", [1, 2, 3, 7])
def test_capacity_trace_entries_are_uniform_over_the_whole_trace(entries: int) -> None:
    # Prepare: entry k's communication is k + 1 kbit/s, so a device's bandwidth names its entry
    n = 21_000
    trace = CapacityTrace(
        "x",
        "0" * 64,
        np.full(entries, 10.0),
        np.arange(1.0, entries + 1.0),
    )
    pop = Population(PopulationConfig(n, seed=67, capacity_trace=trace))
    # Execute
    prof = pop.profiles(np.arange(n))
    entry = np.round(prof.down_bps / 1024.0).astype(np.int64) - 1
    # Assert: every entry, the last included, in its share 1/entries
    assert np.array_equal(prof.up_bps, prof.down_bps)
    assert entry.min() == 0 and entry.max() == entries - 1
    for k in range(entries):
        _share_ok(float(np.mean(entry == k)), 1 / entries, n)


# --- seeds and days are mixed in whole -------------------------------------------------------


def test_seeds_apart_by_2_to_the_32_give_different_fleets() -> None:
    # A seed reduced to its low 32 bits (as some generators take it) would make these one fleet.
    ids = np.arange(2_000)
    base = Population.build(2_000, seed=5).profiles(ids)
    for seed in (5 + 2**32, 5 + 2**40, 5 + 2**62):
        other = Population.build(2_000, seed=seed).profiles(ids)
        # independent draws: two equal speeds would be a coincidence of one in 2^53
        assert int(np.sum(other.compute_sps == base.compute_sps)) == 0, seed


def test_nights_before_and_after_day_0_are_skipped_independently() -> None:
    # Prepare: every device in one time zone with the same 22:30-06:00 night, no jitter and no
    # daytime session; simulated time 0 is local 12:00 of day -2 (start_hour_utc=-36). At
    # local 23:00 of day d only night d covers the device, so it is eligible iff it has home
    # wifi and night d is not skipped (probability 0.9).
    n = 20_000
    pop = Population.build(
        n,
        seed=67,
        start_hour_utc=-36.0,
        tz_sigma_h=0.0,
        night_start_sd_h=0.0,
        night_jitter_sd_h=0.0,
        night_hours_sd=0.0,
        day_session_p=0.0,
    )
    prof = pop.profiles(np.arange(n))
    wifi = prof.home_wifi

    def night(d: int) -> np.ndarray:
        return pop.available_mask(prof, (24 * d + 23 + 36) * 3600.0)[wifi]

    # Execute: nights -1, 0 and 1 (day numbers -1 and 1 must not share their draws)
    minus, zero, plus = night(-1), night(0), night(1)
    m = int(wifi.sum())
    # Assert: each night kept with probability 0.9, and any two of them together 0.81
    for kept in (minus, zero, plus):
        _share_ok(float(kept.mean()), 0.9, m)
    for a, b in ((minus, plus), (minus, zero), (zero, plus)):
        _share_ok(float(np.mean(a & b)), 0.81, m)


def test_a_devices_behaviour_entry_is_drawn_apart_from_its_capacity_entry(tmp_path: Path) -> None:
    # Prepare: two entries in each trace. Capacity entry k has k + 1 kbit/s; behaviour entry 0
    # is active over [0, 100] s of its 1,000 s cycle and entry 1 over [500, 600] s, so at
    # t = 50 s exactly the devices on behaviour entry 0 are available.
    n = 20_000
    cap = CapacityTrace("x", "0" * 64, np.full(2, 10.0), np.array([1.0, 2.0]))
    doc = {
        "0": {"active": [0], "inactive": [100], "finish_time": 1000},
        "1": {"active": [500], "inactive": [600], "finish_time": 1000},
    }
    path = tmp_path / "behaviour.json"
    path.write_text(json.dumps(doc))
    pop = Population.build(
        n, seed=67, capacity_trace=cap, behaviour_trace=load_behaviour_trace(path)
    )
    prof = pop.profiles(np.arange(n))
    # Execute
    on_cap_0 = prof.down_bps == 1024.0
    on_beh_0 = pop.available_mask(prof, 50.0)
    # Assert: each entry in half the devices, and the two draws independent (docs/traces.md:
    # one hashed draw each), so a quarter of the devices are on entry 0 of both
    _share_ok(float(on_cap_0.mean()), 0.5, n)
    _share_ok(float(on_beh_0.mean()), 0.5, n)
    _share_ok(float(np.mean(on_cap_0 & on_beh_0)), 0.25, n)


# --- device ids and sample_available's paths -------------------------------------------------


@pytest.mark.parametrize("ids", [[-1], [0, -1], [-(2**40)]])
def test_a_negative_device_id_is_refused(ids: list[int]) -> None:
    pop = Population.build(10, seed=0)
    with pytest.raises(PopulationError, match=r"device ids must be in \[0, 10\)"):
        pop.profiles(np.array(ids, dtype=np.int64))


@pytest.mark.parametrize("ids", [np.array([[0, 1]]), np.array(3), np.zeros((2, 0), dtype=np.int64)])
def test_device_ids_that_are_not_one_dimensional_are_refused(ids: np.ndarray) -> None:
    pop = Population.build(10, seed=0)
    with pytest.raises(PopulationError, match="device ids must be a 1-D integer array"):
        pop.profiles(ids)


def test_the_small_fleet_scan_looks_at_every_device_across_chunks() -> None:
    # Prepare: 300,000 devices, all eligible: more than one 262,144-device chunk, and n large
    # enough (8 n >= 300,000) for the scan of every device
    total = 300_000
    pop = Population.build(total, seed=67, availability="always")
    # Execute
    got = pop.sample_available(total, 0.0, np.random.default_rng(0))
    # Assert: every device once, the ones at the chunks' edges included
    assert np.array_equal(np.sort(got), np.arange(total))


def _scarce(total: int) -> tuple[Population, float, float]:
    # Only 12 GiB devices (a tenth of the fleet) at 14:00 UTC (about 4 % eligible): some 0.4 %
    return Population.build(total, seed=67), 18 * 3600.0, 12 * 1024.0


def test_rejection_sampling_over_many_batches_returns_distinct_ids() -> None:
    # Prepare: 10^6 devices, of which about 4,000 are eligible: each batch of 4,096 random ids
    # finds some 16, so 600 need some 40 batches, which overlap
    pop, t, mem = _scarce(10**6)
    # Execute
    got = pop.sample_available(600, t, np.random.default_rng(1), min_memory_mb=mem)
    # Assert
    assert got.size == 600 and np.unique(got).size == 600
    prof = pop.profiles(got)
    assert pop.available_mask(prof, t).all() and (prof.memory_mb >= mem).all()


def test_when_few_are_eligible_the_scan_returns_each_of_them_once() -> None:
    # Prepare: 300,000 devices (rejection sampling, as 8 n < 300,000), some 1,200 eligible:
    # 64 batches find fewer than n = 5,000, so the rest of the fleet is scanned
    total, n = 300_000, 5_000
    pop, t, mem = _scarce(total)
    every = np.arange(total)
    prof = pop.profiles(every)
    want = every[pop.available_mask(prof, t) & (prof.memory_mb >= mem)]
    assert 0 < want.size < n
    # Execute
    got = pop.sample_available(n, t, np.random.default_rng(2), min_memory_mb=mem)
    # Assert: all the eligible devices, each once
    assert got.size == want.size
    assert np.array_equal(np.sort(got), want)


# --- a night's jitter is clipped to +-12 h ---------------------------------------------------


def test_a_wide_jitter_moves_nights_by_at_most_12_hours() -> None:
    # Prepare: every device in UTC with a 4 h night starting at local midnight, jittered by
    # N(0, 1000 h): nearly every night is moved to the clip, +12 h or -12 h. No skipped night
    # and no daytime session.
    n = 20_000
    pop = Population.build(
        n,
        seed=67,
        start_hour_utc=0.0,
        tz_sigma_h=0.0,
        night_start_mean_h=0.0,
        night_start_sd_h=0.0,
        night_jitter_sd_h=1000.0,
        night_hours_mean=4.0,
        night_hours_sd=0.0,
        skip_night_p=0.0,
        day_session_p=0.0,
    )
    prof = pop.profiles(np.arange(n))
    wifi = prof.home_wifi
    # Execute: local 14:00 of day 1
    got = pop.available_mask(prof, (24 + 14) * 3600.0)[wifi]
    # Assert: night d's window [24 d + j, 24 d + j + 4) holds 24 + 14 h for night 1 iff its
    # jitter j > 10 h (12 h when clipped), for night 2 iff j <= -10 h (-12 h when clipped), and
    # for no other night; each has probability p, independently
    p = 0.5 * math.erfc(10.0 / 1000.0 / math.sqrt(2))
    _share_ok(float(got.mean()), 1 - (1 - p) ** 2, int(wifi.sum()))


# --- local days before day 0 -----------------------------------------------------------------


@pytest.mark.parametrize("local_day", [-1, 1])
def test_a_daytime_session_before_day_0_counts_as_on_any_day(local_day: int) -> None:
    # Prepare: nights all skipped, every device in UTC, simulated time 0 at local 12:00 of day
    # -1 (start_hour_utc=-12: local hours are negative until time 12 h)
    n = 40_000
    pop = Population.build(n, seed=67, start_hour_utc=-12.0, tz_sigma_h=0.0, skip_night_p=1.0)
    prof = pop.profiles(np.arange(n))
    # Execute: local 12:00 of `local_day`
    got = pop.available_mask(prof, (24.0 * (local_day + 1)) * 3600.0)
    # Assert: a session (35 % of days, 60 % on wifi) starts U(9, 17) h and lasts U(0.5, 2.5)
    # h, so it holds 12:00 with probability E[length] / 8 h = 1.5 / 8 (its start falls in the
    # length before 12:00 with density 1/8 per hour), on day -1 as on day 1
    _share_ok(float(got.mean()), 0.35 * 0.6 * 1.5 / 8, n)


# --- refusals the other tests left out -------------------------------------------------------


def test_a_nan_simulated_time_is_refused() -> None:
    pop = Population.build(10, seed=0)
    prof = pop.profiles(np.arange(10))
    with pytest.raises(PopulationError, match="sim_time_s must be finite and >= 0"):
        pop.available_mask(prof, math.nan)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        # shares -0.1 / 0.6 / 0.5 sum to 1, and a negative share is still not a share
        ({"share": -0.1}, "share -0.1"),
        ({"compute_sigma": -0.1}, "compute_sigma is -0.1"),
        ({"latency_sigma": -1e-9}, "latency_sigma is -1e-09"),
        ({"memory_gb": ("4",)}, "memory sizes must be finite and > 0 GiB"),
        ({"memory_gb": (4.0, None)}, "memory sizes must be finite and > 0 GiB"),
    ],
)
def test_a_negative_share_or_sigma_or_a_memory_size_that_is_no_number_is_refused(
    change: dict[str, object], match: str
) -> None:
    tier = dataclasses.replace(LOW, **change)  # type: ignore[arg-type]
    mid = dataclasses.replace(MID, share=0.6) if "share" in change else MID
    high = dataclasses.replace(HIGH, share=0.5) if "share" in change else HIGH
    with pytest.raises(PopulationError, match=match):
        PopulationConfig(5, tiers=(tier, mid, high))


def test_shares_must_sum_to_1_within_rounding_only() -> None:
    # 0.3 + 0.5 + 0.2 is 1 only up to float rounding, so that much is taken; a millionth off is
    # a misconfigured fleet (its last tier silently took the remainder)
    PopulationConfig(5, tiers=(LOW, dataclasses.replace(MID, share=0.5 - 1e-12), HIGH))
    for off in (1e-6, -1e-6):
        tiers = (LOW, dataclasses.replace(MID, share=0.5 + off), HIGH)
        with pytest.raises(PopulationError, match="tier shares must sum to 1"):
            PopulationConfig(5, tiers=tiers)


# --- one device's profile ---------------------------------------------------------------------


def test_a_devices_profile_names_its_own_tier() -> None:
    # A fleet of high-tier phones only: every profile says so
    only_high = Population(
        PopulationConfig(50, seed=67, tiers=(dataclasses.replace(HIGH, share=1.0),))
    )
    assert {only_high.profile(i).tier for i in range(50)} == {Tier.HIGH}
    part = only_high.profiles(np.arange(50)).take([3, 7])  # a sub-batch keeps the fleet's tiers
    assert [part[0].tier, part[1].tier] == [Tier.HIGH, Tier.HIGH]
    # The default fleet: one profile at a time, the tiers in the docs' shares 0.30 / 0.50 / 0.20
    n = 3_000
    pop = Population.build(n, seed=67)
    tiers = [pop.profile(i).tier for i in range(n)]
    for tier, share in ((Tier.LOW, 0.30), (Tier.MID, 0.50), (Tier.HIGH, 0.20)):
        _share_ok(tiers.count(tier) / n, share, n)
