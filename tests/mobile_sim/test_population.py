"""Tests for the lazily held device population."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mobile_sim.population import (
    DEFAULT_TIERS,
    Population,
    PopulationConfig,
    PopulationError,
    Tier,
)


def test_profiles_are_a_pure_function_of_seed_and_id() -> None:
    # Prepare
    a = Population.build(1_000_000, seed=7)
    b = Population.build(1_000_000, seed=7)
    other = Population.build(1_000_000, seed=8)
    ids = np.array([0, 17, 999_999, 17], dtype=np.int64)

    # Execute
    pa, pb, po = a.profiles(ids), b.profiles(ids), other.profiles(ids)

    # Assert
    np.testing.assert_array_equal(pa.compute_sps, pb.compute_sps)
    np.testing.assert_array_equal(pa.up_bps, pb.up_bps)
    assert pa[1] == pa[3] == a.profile(17)
    assert not np.array_equal(pa.compute_sps, po.compute_sps)


def test_profile_does_not_depend_on_batch_composition() -> None:
    # Prepare
    pop = Population.build(5000, seed=3)

    # Execute
    alone = pop.profile(1234)
    in_batch = pop.profiles(np.arange(1000, 2000))[234]

    # Assert
    assert alone == in_batch


def test_tier_mix_and_summary_statistics_match_the_config() -> None:
    # Prepare
    pop = Population.build(200_000, seed=1)

    # Execute
    prof = pop.profiles(np.arange(200_000))

    # Assert: shares within 1 point, log-normal medians within 3 %, dropout 6-10 %.
    for k, spec in enumerate(DEFAULT_TIERS):
        sel = prof.tier_index == k
        assert abs(sel.mean() - spec.share) < 0.01
        assert np.median(prof.compute_sps[sel]) == pytest.approx(spec.compute_median_sps, rel=0.03)
        assert np.median(prof.down_bps[sel]) / 1e6 == pytest.approx(spec.down_median_mbps, rel=0.03)
        assert np.median(prof.up_bps[sel]) / 1e6 == pytest.approx(spec.up_median_mbps, rel=0.03)
        assert set(np.unique(prof.memory_mb[sel]) / 1024.0) == set(spec.memory_gb)
    assert 0.06 <= prof.dropout_p.mean() <= 0.10
    assert prof[0].tier in set(Tier)


def test_availability_is_diurnal_and_peaks_at_night() -> None:
    # Prepare: time 0 is 20:00 UTC, so hour 6 of the run is 02:00 and hour 18 is 14:00.
    pop = Population.build(50_000, seed=2)

    # Execute
    night = pop.available_fraction(6 * 3600.0)
    afternoon = pop.available_fraction(18 * 3600.0)
    next_night = pop.available_fraction(30 * 3600.0)

    # Assert
    assert night > 0.4
    assert afternoon < 0.1
    assert night > 5 * afternoon
    assert abs(next_night - night) < 0.05  # the daily cycle repeats (with per-night jitter)


def test_always_available_population() -> None:
    # Prepare
    pop = Population.build(100, seed=0, availability="always")

    # Execute
    got = pop.sample_available(100, 12345.0, np.random.default_rng(0))

    # Assert
    assert sorted(got.tolist()) == list(range(100))


def test_sample_available_returns_distinct_eligible_devices() -> None:
    # Prepare
    pop = Population.build(1_000_000, seed=4)
    rng = np.random.default_rng(0)
    t = 7 * 3600.0

    # Execute
    ids = pop.sample_available(1300, t, rng, min_memory_mb=4096)

    # Assert
    assert ids.size == 1300 and np.unique(ids).size == 1300
    prof = pop.profiles(ids)
    assert pop.available_mask(prof, t).all()
    assert (prof.memory_mb >= 4096).all()


def test_sample_available_is_reproducible_and_respects_exclude() -> None:
    # Prepare
    pop = Population.build(300, seed=5)
    t = 6 * 3600.0

    # Execute
    a = pop.sample_available(50, t, np.random.default_rng(1))
    b = pop.sample_available(50, t, np.random.default_rng(1))
    c = pop.sample_available(500, t, np.random.default_rng(1), exclude=a.tolist())

    # Assert
    np.testing.assert_array_equal(a, b)
    assert not set(a.tolist()) & set(c.tolist())
    assert c.size == int(pop.is_available(np.arange(300), t).sum()) - 50


def test_sample_available_returns_fewer_when_few_are_eligible() -> None:
    # Prepare
    pop = Population.build(40, seed=0)

    # Execute
    got = pop.sample_available(40, 18 * 3600.0, np.random.default_rng(0))

    # Assert
    assert got.size == int(pop.is_available(np.arange(40), 18 * 3600.0).sum()) < 40


def test_million_devices_cost_little_memory() -> None:
    # Prepare
    tracemalloc.start()
    pop = Population.build(1_000_000, seed=9)
    rng = np.random.default_rng(0)

    # Execute
    for r in range(3):
        pop.sample_available(1000, r * 600.0, rng)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Assert: nothing proportional to 10^6 devices is allocated (that would be >= 8 MB).
    assert peak < 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_devices": 0}, "num_devices"),
        ({"num_devices": 5, "seed": -1}, "seed"),
        ({"num_devices": 5, "tiers": DEFAULT_TIERS[:2]}, "sum to 1"),
        ({"num_devices": 5, "availability": "sometimes"}, "availability"),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(PopulationError, match=match):
        PopulationConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_queries_are_refused() -> None:
    pop = Population.build(10, seed=0)
    with pytest.raises(PopulationError, match="device ids"):
        pop.profiles(np.array([10]))
    with pytest.raises(PopulationError, match="device ids"):
        pop.profiles(np.array([0.5]))
    with pytest.raises(PopulationError, match="sim_time_s"):
        pop.is_available(np.array([1]), -1.0)
    with pytest.raises(PopulationError, match="n must"):
        pop.sample_available(-1, 0.0, np.random.default_rng(0))
