"""Tests for the simulated round clock."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mobile_sim.clock import ClockError, SimClock
from mobile_sim.population import Population, ProfileBatch


def _cohort(n: int, *, dropout: float = 0.0) -> ProfileBatch:
    """n identical devices except compute speed: device i trains at (i+1)*10 samples/s."""
    prof = Population.build(1000, seed=0).profiles(np.arange(n))
    return dataclasses.replace(
        prof,
        compute_sps=np.arange(1, n + 1, dtype=np.float64) * 10.0,
        down_bps=np.full(n, 8e6),
        up_bps=np.full(n, 8e5),
        latency_s=np.full(n, 0.05),
        dropout_p=np.full(n, dropout),
    )


def test_device_time_is_download_plus_compute_plus_upload() -> None:
    # Prepare
    clock = SimClock(seed=0)
    prof = _cohort(1)

    # Execute: 1 MB down at 8 Mbit/s, 100 samples x 2 epochs at 10/s, 100 kB up at 0.8 Mbit/s.
    down, comp, up = clock.device_times(prof, 1_000_000, 100_000, 100, epochs=2)

    # Assert
    assert down[0] == pytest.approx(0.05 + 1.0)
    assert comp[0] == pytest.approx(20.0)
    assert up[0] == pytest.approx(0.05 + 1.0)


def test_first_per_round_arrivals_are_kept_and_the_rest_straggle() -> None:
    # Prepare: 10 devices, the fastest is the last one.
    clock = SimClock(seed=0)
    prof = _cohort(10)

    # Execute
    t = clock.plan_round(prof, 0, 0, 100, epochs=1, per_round=3, deadline_s=None, round_id=0)

    # Assert
    assert t.kept.tolist() == [9, 8, 7]
    assert sorted(t.stragglers.tolist()) == list(range(7))
    assert t.dropped.size == 0
    assert t.duration_s == pytest.approx(0.1 + 100 / 80)
    assert t.kept_mask.tolist() == [False] * 7 + [True] * 3


def test_deadline_cuts_slow_devices_and_the_round_lasts_until_the_deadline() -> None:
    # Prepare: device i needs 0.1 + 100/((i+1)*10) s; with a 5 s deadline devices 2.. make it.
    clock = SimClock(seed=0)
    prof = _cohort(10)

    # Execute
    t = clock.plan_round(prof, 0, 0, 100, epochs=1, per_round=9, deadline_s=5.0, round_id=0)

    # Assert
    assert sorted(t.kept.tolist()) == list(range(2, 10))
    assert sorted(t.stragglers.tolist()) == [0, 1]
    assert t.duration_s == 5.0


def test_dropouts_never_report_and_are_reproducible() -> None:
    # Prepare
    prof = _cohort(200, dropout=0.5)

    # Execute
    a = SimClock(seed=1).plan_round(
        prof, 0, 0, 1, epochs=1, per_round=200, deadline_s=None, round_id=3
    )
    b = SimClock(seed=1).plan_round(
        prof, 0, 0, 1, epochs=1, per_round=200, deadline_s=None, round_id=3
    )
    c = SimClock(seed=1).plan_round(
        prof, 0, 0, 1, epochs=1, per_round=200, deadline_s=None, round_id=4
    )

    # Assert
    np.testing.assert_array_equal(a.dropped, b.dropped)
    assert not np.array_equal(a.dropped, c.dropped)
    assert 60 < a.dropped.size < 140
    assert not set(a.dropped.tolist()) & set(a.kept.tolist())
    assert a.kept.size + a.dropped.size == 200
    assert np.isinf(a.finish_s[np.isin(a.device_ids, a.dropped)]).all()


def test_population_dropout_rate_is_bonawitz_like() -> None:
    # Prepare
    pop = Population.build(100_000, seed=0)
    prof = pop.profiles(np.arange(20_000))
    clock = SimClock(seed=0)

    # Execute
    rate = clock.dropout_mask(prof, round_id=0).mean()

    # Assert
    assert 0.06 <= rate <= 0.10


def test_advance_accumulates_simulated_time() -> None:
    # Prepare
    clock = SimClock(seed=0, start_s=10.0)
    t = clock.plan_round(_cohort(3), 0, 0, 10, epochs=1, per_round=1, deadline_s=None, round_id=0)

    # Execute
    now = clock.advance(t)
    later = clock.advance(5.0)

    # Assert
    assert now == pytest.approx(10.0 + t.duration_s)
    assert later == pytest.approx(now + 5.0)
    assert t.summary()["kept"] == 1


def test_bad_arguments_are_refused() -> None:
    clock = SimClock(seed=0)
    prof = _cohort(3)
    with pytest.raises(ClockError, match="per_round"):
        clock.plan_round(prof, 0, 0, 1, epochs=1, per_round=0, deadline_s=None, round_id=0)
    with pytest.raises(ClockError, match="deadline"):
        clock.plan_round(prof, 0, 0, 1, epochs=1, per_round=1, deadline_s=0.0, round_id=0)
    with pytest.raises(ClockError, match="non-negative"):
        clock.plan_round(prof, -1, 0, 1, epochs=1, per_round=1, deadline_s=None, round_id=0)
    with pytest.raises(ClockError, match="twice"):
        clock.plan_round(
            prof.take([0, 0]), 0, 0, 1, epochs=1, per_round=1, deadline_s=None, round_id=0
        )
    with pytest.raises(ClockError, match="cost_per_sample"):
        SimClock(cost_per_sample=0.0)
    with pytest.raises(ClockError, match="advance"):
        clock.advance(-1.0)
