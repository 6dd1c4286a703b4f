"""A population's configuration: what each bound takes and refuses, each at its edge, and the
tier draw against the shares (docs/simulator.md, "What a device has"). Mutation testing of
mobile_sim/population.py found these edges unchecked: a refusal removed, or a bound moved by
one, left every earlier test passing."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from mobile_sim.population import (
    DEFAULT_TIERS,
    Population,
    PopulationConfig,
    PopulationError,
    Tier,
)

LOW, MID, HIGH = DEFAULT_TIERS


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"home_wifi_p": 1.5}, "home_wifi_p 1.5"),
        ({"home_wifi_p": -0.1}, "home_wifi_p -0.1"),
        ({"dropout_p": 1.0}, "dropout_p 1.0"),
        ({"share": 1.2}, "share 1.2"),
        ({"latency_median_ms": -1.0}, "latency_median_ms must be >= 0"),
        ({"compute_median_sps": 0.0}, "compute_median_sps is 0.0"),
        ({"down_sigma": 10.5}, "down_sigma is 10.5"),
        ({"memory_gb": ()}, "memory sizes"),
        ({"memory_gb": (4.0, 0.0)}, "memory sizes"),
    ],
)
def test_a_tier_out_of_range_is_refused(change: dict[str, object], match: str) -> None:
    tier = dataclasses.replace(MID, **change)  # type: ignore[arg-type]
    with pytest.raises(PopulationError, match=match):
        PopulationConfig(5, tiers=(LOW, tier, HIGH))


@pytest.mark.parametrize(
    "change",
    [
        {"home_wifi_p": 1.0},
        {"home_wifi_p": 0.0},
        {"dropout_p": 0.0},
        {"latency_median_ms": 0.0},
        {"down_sigma": 10.0},
        {"compute_sigma": 0.0},
    ],
)
def test_a_tier_at_its_bounds_is_taken(change: dict[str, object]) -> None:
    tier = dataclasses.replace(MID, **change)  # type: ignore[arg-type]
    pop = Population(PopulationConfig(50, tiers=(LOW, tier, HIGH)))
    prof = pop.profiles(np.arange(50))
    assert np.isfinite(prof.down_bps).all() and (prof.down_bps > 0).all()


def test_no_tiers_is_refused_with_its_reason() -> None:
    with pytest.raises(PopulationError, match="at least one tier is required"):
        PopulationConfig(5, tiers=())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"skip_night_p": 1.1}, "skip_night_p"),
        ({"day_session_p": -0.1}, "day_session_p"),
        ({"day_session_wifi_p": 2.0}, "day_session_wifi_p"),
        ({"tz_sigma_h": -1.0}, "spreads"),
        ({"night_hours_sd": math.inf}, "spreads"),
        ({"start_hour_utc": math.nan}, "finite"),
        ({"night_start_mean_h": math.inf}, "finite"),
        ({"start_hour_utc": 1.5e9}, "start_hour_utc must be within"),
        ({"night_hours_mean": 0.0}, "night_hours_mean"),
        ({"night_hours_mean": 24.5}, "night_hours_mean"),
        ({"day_session_hours": (0.0, 2.0)}, "day_session_hours"),
        ({"day_session_hours": (3.0, 2.0)}, "day_session_hours"),
        ({"day_session_hours": (1.0, 8.5)}, "day_session_hours"),
        ({"num_devices": 2**63}, "num_devices"),
        ({"seed": 1.0}, "seed"),
    ],
)
def test_a_fleet_setting_out_of_range_is_refused(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"num_devices": 5, **kwargs}
    with pytest.raises(PopulationError, match=match):
        PopulationConfig(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"skip_night_p": 1.0, "day_session_p": 0.0, "day_session_wifi_p": 1.0},
        {"tz_sigma_h": 0.0, "night_hours_sd": 0.0},
        {"night_hours_mean": 24.0},
        {"start_hour_utc": -1e9},
        {"start_hour_utc": 1e9},
        {"day_session_hours": (8.0, 8.0)},
        {"num_devices": 2**63 - 1},
        {"num_devices": 1},
    ],
)
def test_a_fleet_setting_at_its_bounds_is_taken(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"num_devices": 5, **kwargs}
    pop = Population(PopulationConfig(**args))  # type: ignore[arg-type]
    assert pop.is_available(np.array([0]), 3600.0).shape == (1,)


def test_tiers_are_drawn_in_their_shares_and_a_zero_share_never() -> None:
    # Prepare: shares 0.3 / 0 / 0.7, then the defaults
    tiers = (
        dataclasses.replace(LOW, share=0.3),
        dataclasses.replace(MID, share=0.0),
        dataclasses.replace(HIGH, share=0.7),
    )
    n = 50_000

    # Execute
    skewed = Population(PopulationConfig(n, seed=3, tiers=tiers)).profiles(np.arange(n))
    default = Population.build(n, seed=3).profiles(np.arange(n))

    # Assert: within five standard errors of each share; a share of 0 is never drawn
    counts = np.bincount(skewed.tier_index, minlength=3) / n
    assert counts[1] == 0.0
    for got, p in ((counts[0], 0.3), (counts[2], 0.7)):
        assert abs(got - p) < 5 * math.sqrt(p * (1 - p) / n)
    for k, tier in enumerate(DEFAULT_TIERS):
        got = float(np.mean(default.tier_index == k))
        assert abs(got - tier.share) < 5 * math.sqrt(tier.share * (1 - tier.share) / n)
        assert default.tiers[k] == tier.tier
    assert Population.build(5, seed=0).profile(3).tier in tuple(Tier)


def test_one_tier_is_every_device() -> None:
    only = dataclasses.replace(HIGH, share=1.0)
    prof = Population(PopulationConfig(2_000, seed=1, tiers=(only,))).profiles(np.arange(2_000))
    assert (prof.tier_index == 0).all()
    assert set(np.unique(prof.memory_mb).tolist()) == {8.0 * 1024, 12.0 * 1024}


def test_at_most_127_tiers() -> None:
    # Tier indices are int8: 127 tiers are taken, 128 refused
    many = tuple(dataclasses.replace(MID, share=1 / 127) for _ in range(127))
    prof = Population(PopulationConfig(1_000, tiers=many)).profiles(np.arange(1_000))
    assert int(prof.tier_index.min()) >= 0 and int(prof.tier_index.max()) <= 126
    more = tuple(dataclasses.replace(MID, share=1 / 128) for _ in range(128))
    with pytest.raises(PopulationError, match="at most 127 tiers, got 128"):
        PopulationConfig(5, tiers=more)


def test_tiers_must_be_tier_specs_of_known_tiers_with_finite_numbers() -> None:
    with pytest.raises(PopulationError, match="tiers must be TierSpec objects, got dict"):
        PopulationConfig(5, tiers=({"share": 1.0},))  # type: ignore[arg-type]
    odd = dataclasses.replace(MID, tier="ultra", share=1.0)  # type: ignore[arg-type]
    with pytest.raises(PopulationError, match="tier must be one of"):
        PopulationConfig(5, tiers=(odd,))
    with pytest.raises(PopulationError, match="share must be a finite number, got nan"):
        PopulationConfig(5, tiers=(dataclasses.replace(MID, share=math.nan),))
    with pytest.raises(PopulationError, match="up_median_mbps must be a finite number"):
        PopulationConfig(5, tiers=(dataclasses.replace(MID, share=1.0, up_median_mbps="4"),))  # type: ignore[arg-type]


def test_queries_refuse_what_is_not_a_device_or_a_count() -> None:
    pop = Population.build(100, seed=0)
    with pytest.raises(PopulationError, match="a device id is an integer, got '5'"):
        pop.profile("5")  # type: ignore[arg-type]
    assert pop.profile(np.int64(5)).device_id == 5  # type: ignore[arg-type]
    with pytest.raises(PopulationError, match="sample must be an integer >= 1, got 0"):
        pop.available_fraction(0.0, sample=0)
    assert 0.0 <= pop.available_fraction(0.0, sample=1) <= 1.0
    rng = np.random.default_rng(0)
    with pytest.raises(PopulationError, match="min_memory_mb must be a number"):
        pop.sample_available(5, 0.0, rng, min_memory_mb=True)
    with pytest.raises(PopulationError, match="got nan"):
        pop.sample_available(5, 0.0, rng, min_memory_mb=math.nan)


def test_traces_must_be_loaded_traces() -> None:
    with pytest.raises(PopulationError, match="behaviour_trace must be a BehaviourTrace"):
        PopulationConfig(5, behaviour_trace="traces/behave.json")  # type: ignore[arg-type]
    with pytest.raises(PopulationError, match="capacity_trace must be a CapacityTrace"):
        PopulationConfig(5, capacity_trace="traces/capacity.json")  # type: ignore[arg-type]
