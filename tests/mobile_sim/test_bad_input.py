"""Bad input to the population, clock, fleet and partitions: a clear typed error, never a hang."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

from mobile_sim.clock import ClockError, SimClock
from mobile_sim.fleet import SimFleet
from mobile_sim.partition import dirichlet, iid, natural, partition, shards
from mobile_sim.population import DEFAULT_TIERS, Population, PopulationConfig, PopulationError

LOW, MID, HIGH = DEFAULT_TIERS


def _tiers(**low: object) -> tuple[object, ...]:
    return (replace(LOW, **low), MID, HIGH)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("low", "match"),
    [
        ({"up_median_mbps": 0.0}, "up_median_mbps is 0.0 .*never finish"),  # zero bandwidth
        ({"down_median_mbps": -1.0}, "down_median_mbps is -1.0"),
        ({"compute_median_sps": math.nan}, "compute_median_sps must be a finite number, got nan"),
        ({"latency_median_ms": math.nan}, "latency_median_ms must be a finite number"),
        ({"latency_median_ms": math.inf}, "latency_median_ms must be a finite number"),
        ({"up_median_mbps": math.inf}, "up_median_mbps must be a finite number"),
        ({"up_sigma": 1e3}, "at most 10: up_sigma"),  # exp overflowed to inf / 0 bits/s
        ({"memory_gb": (math.nan,)}, "memory sizes"),
        ({"memory_gb": ()}, "memory sizes"),
        ({"share": math.nan}, "share must be a finite number"),
        ({"dropout_p": 1.0}, "dropout_p 1.0"),
        ({"tier": "bogus"}, "tier must be one of"),
    ],
)
def test_a_tier_that_would_give_nan_infinite_or_zero_speeds_is_refused(
    low: dict[str, object], match: str
) -> None:
    # Before: NaN medians and sigmas over ~80 built fleets whose devices had NaN or infinite
    # round times (counted as stragglers) or 0 bits/s (with numpy warnings).
    with pytest.raises(PopulationError, match=match):
        PopulationConfig(100, 0, tiers=_tiers(**low))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_devices": 10.5}, "num_devices must be an integer"),  # was a 10-device fleet
        ({"num_devices": 1e6}, "num_devices must be an integer"),
        ({"num_devices": True}, "num_devices must be an integer"),
        ({"num_devices": 2**64}, r"num_devices must be an integer in \[1, 2\*\*63\)"),
        ({"num_devices": 5, "seed": 1.5}, "seed must be an integer"),  # was a TypeError
        ({"num_devices": 5, "tiers": ("low",)}, "TierSpec objects, got str"),  # AttributeError
    ],
)
def test_population_sizes_and_seeds_must_be_integers(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(PopulationError, match=match):
        PopulationConfig(**kwargs)  # type: ignore[arg-type]


def test_edge_tiers_still_build_a_working_fleet() -> None:
    # Prepare: the widest spread allowed, zero latency, a tier with no share.
    tiers = (replace(LOW, up_sigma=10.0, latency_median_ms=0.0, share=0.5), replace(MID, share=0.5))
    tiers += (replace(HIGH, share=0.0),)
    pop = Population.build(2_000, seed=3, tiers=tiers)

    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in exp, no division by zero
        # a socket an earlier test left to the collector is not this code's warning
        warnings.simplefilter("ignore", ResourceWarning)
        prof = pop.profiles(np.arange(2_000))
        timing = SimFleet(2_000, seed=3, tiers=tiers, availability="always").time_round(
            1, np.arange(50), down_bytes=1000, up_bytes=100, samples=10, epochs=1, per_round=40
        )

    # Assert: every speed finite and positive, every finish time a number.
    assert np.isfinite(prof.up_bps).all() and (prof.up_bps > 0).all()
    assert not np.isnan(timing.finish_s).any()
    assert {int(i) for i in prof.tier_index} == {0, 1}


def test_population_queries_refuse_bad_counts() -> None:
    pop = Population.build(10, seed=0)
    rng = np.random.default_rng(0)
    with pytest.raises(PopulationError, match="n must be an integer"):
        pop.sample_available(2.5, 0.0, rng)  # type: ignore[arg-type]  # was [] silently
    with pytest.raises(PopulationError, match="min_memory_mb"):
        pop.sample_available(2, 0.0, rng, min_memory_mb=math.nan)  # was: nobody, ever
    with pytest.raises(PopulationError, match="sample must be an integer >= 1"):
        pop.available_fraction(0.0, sample=0)  # was nan with two RuntimeWarnings


def test_an_endless_selection_window_is_refused_instead_of_hanging() -> None:
    # Before: max_wait_s=inf looped forever on a cohort 10 devices can never fill.
    fleet = SimFleet(10, seed=0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="both finite, got 900.0, inf"):
        fleet.select(13, rng, round_id=1, max_wait_s=math.inf)
    with pytest.raises(ValueError, match="both finite"):
        fleet.wait_for(13, rng, max_wait_s=math.inf)
    with pytest.raises(ValueError, match="min_memory_mb"):
        fleet.select(3, rng, round_id=1, min_memory_mb=math.nan)  # was: two days, abandoned
    with pytest.raises(ValueError, match="n=2.5"):
        fleet.select(2.5, rng, round_id=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"min_n <= n, got n=0"):
        fleet.wait_for(0, rng)  # as select; was an empty cohort
    assert fleet.now_s == 0.0 and fleet.idle_s == 0.0


@pytest.mark.parametrize("deadline", [0.0, -5.0, math.nan])
def test_a_fleet_refuses_a_bad_deadline_when_built(deadline: float) -> None:
    # Before: accepted, and refused by the clock only at the first round.
    with pytest.raises(ValueError, match="deadline_s must be > 0 seconds or None"):
        SimFleet(10, deadline_s=deadline)


def test_the_clock_refuses_misaligned_or_non_finite_round_inputs() -> None:
    fleet = SimFleet(10, seed=0, availability="always")
    ok = {"down_bytes": 1000, "up_bytes": 100, "samples": 10, "epochs": 1, "per_round": 2}
    bad = [
        ({"up_bytes": [10, 20, 30]}, r"up_bytes must be one number or one per device \(2\)"),
        ({"samples": [[1, 2]]}, "samples must be one number or one per device"),
        ({"samples": [math.nan, 1]}, "non-negative and finite: samples"),  # was a NaN finish
        ({"down_bytes": math.inf}, "non-negative and finite: down_bytes"),
        ({"epochs": 1.5}, "epochs 1.5"),
        ({"per_round": 2.0}, "per_round must be >= 1"),
    ]
    for change, match in bad:
        with pytest.raises(ClockError, match=match):
            fleet.time_round(1, [0, 1], **{**ok, **change})  # type: ignore[arg-type]
    with pytest.raises(ClockError, match="seed must be an integer >= 0"):
        SimClock(-1)
    with pytest.raises(ClockError, match="start_s must be finite"):
        SimClock(0, start_s=math.nan)


# -- partitions -----------------------------------------------------------------------------


def _labels(n: int, classes: int = 10) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % classes


def test_partitions_refuse_what_they_cannot_split() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="6 clients but only 5 examples: every client needs"):
        iid(_labels(5), 6, rng)
    with pytest.raises(ValueError, match="integer >= 1, got 2.5"):
        iid(_labels(50), 2.5, rng)  # type: ignore[arg-type]  # was 2 parts silently
    with pytest.raises(ValueError, match="integer >= 1, got True"):
        shards(_labels(50), True, 2, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"labels must be 1-D .* shape \(5, 10\)"):
        iid(_labels(50).reshape(5, 10), 3, rng)  # was a split of 5 "examples"
    with pytest.raises(ValueError, match="shards_per_client must be >= 1"):
        shards(_labels(50), 3, 1.5, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tries must be an integer >= 1"):
        dirichlet(_labels(50), 3, 0.5, rng, max_tries=0)


@pytest.mark.parametrize("alpha", [math.nan, math.inf, 0.0, -1.0])
def test_dirichlet_refuses_an_alpha_that_is_not_positive_and_finite(alpha: float) -> None:
    # Before: NaN and inf ran 1,000 draws of NaN proportions (a RuntimeWarning each) and then
    # blamed the client count.
    with pytest.raises(ValueError, match="alpha must be positive and finite"):
        partition(_labels(100), 5, "dirichlet", np.random.default_rng(0), alpha=alpha)


@pytest.mark.parametrize("alpha", [5e-324, 1e-9, 1e3, 1e300])
def test_dirichlet_alpha_extremes_still_cover_every_example_once(alpha: float) -> None:
    # Prepare: 10 classes of 30; with alpha near 0 each class lands on one client.
    labels = _labels(300)

    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a socket an earlier test left to the collector is not this code's warning
        warnings.simplefilter("ignore", ResourceWarning)
        parts = dirichlet(labels, 5, alpha, np.random.default_rng(1))

    # Assert
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(300))
    assert min(p.size for p in parts) >= 2
    if alpha < 1e-8:
        assert all(p.size % 30 == 0 for p in parts)  # whole classes only


def test_one_example_per_client_is_the_limit_and_works() -> None:
    # Prepare / Execute: as many clients (or shards) as examples: no client is left empty.
    rng = np.random.default_rng(0)
    by_iid = iid(_labels(7), 7, rng)
    by_shards = shards(_labels(12), 6, 2, rng)

    # Assert
    assert sorted(int(p[0]) for p in by_iid) == list(range(7))
    assert [p.size for p in by_shards] == [2] * 6
    np.testing.assert_array_equal(np.sort(np.concatenate(by_shards)), np.arange(12))


def test_natural_groups_must_hold_integer_indices_within_the_data() -> None:
    with pytest.raises(ValueError, match=r"group\(s\) \[1\] hold non-integer"):
        natural([[0, 1], [1.5]])  # was truncated to example 1
    with pytest.raises(ValueError, match=r"group\(s\) \[1\] hold example indices >= 4"):
        natural([[0, 1], [2, 4]], num_examples=4)
    assert [p.tolist() for p in natural([[3, 1], np.array([0, 2])], num_examples=4)] == [
        [1, 3],
        [0, 2],
    ]


# -- backends -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sequential", "vectorized"])
def test_backends_refuse_a_round_they_would_train_wrongly(name: str) -> None:
    # Prepare
    from mobile_sim.backends import TrainContext, TrainJob, build_backend
    from mobile_sim.data import load_digits_data
    from mobile_sim.models import build_model
    from sdk.flat import get_flat_params

    data = load_digits_data()
    n = len(data.x_train)
    ctx = TrainContext("digits_mlp", data.x_train, data.y_train, epochs=1, batch_size=8, lr=0.1)
    params = get_flat_params(build_model("digits_mlp"))
    backend = build_backend(name)
    backend.start(ctx)

    def job(indices: object) -> TrainJob:
        return TrainJob("dev-7", 7, 1, 0, np.asarray(indices))

    bad = [
        (
            params,
            job([-1, 3]),
            rf"dev-7: example indices must be in \[0, {n}\), got range \[-1, 3\]",
        ),
        (params, job([n]), "example indices must be in"),  # was an IndexError deep in numpy
        (params, job([0.0, 1.0]), "dev-7: indices must be a 1-D integer array"),
        (params, job([[0, 1]]), "dev-7: indices must be a 1-D integer array"),
        (params, job([]), "dev-7: a device needs at least one example"),
        (params[None, :], job([0, 1]), r"params must be a 1-D array .* \(1, 2410\)"),
        (params.astype(np.int32), job([0, 1]), "params must be floating point"),
    ]

    # Execute / Assert: each refused before training, and the backend still trains after.
    try:
        for p, j, match in bad:
            with pytest.raises(ValueError, match=match):
                backend.train(p, [job([0, 1, 2]), j])
        (res,) = backend.train(params, [job([0, 1, 2])])
    finally:
        backend.close()
    assert res.num_examples == 3 and np.isfinite(res.delta).all()


def test_pool_settings_must_be_integers() -> None:
    from mobile_sim.backends.process_pool import ProcessPoolBackend

    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 2.5"):
        ProcessPoolBackend(workers=2.5)  # type: ignore[arg-type]  # was a TypeError at start
    with pytest.raises(ValueError, match="threads_per_worker must be an integer"):
        ProcessPoolBackend(threads_per_worker=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),  # trained nothing, silently
        ({"epochs": 1.5}, "epochs must be an integer"),
        ({"batch_size": -1}, "batch_size must be an integer >= 1"),  # trained nothing
        ({"lr": -0.1}, "lr must be finite and > 0"),  # vectorized did gradient ascent
        ({"lr": math.nan}, "lr must be finite and > 0"),
        ({"momentum": math.nan}, "momentum must be finite and >= 0"),  # NaN deltas
        ({"momentum": -0.5}, "momentum must be finite and >= 0"),
        ({"y_train": np.zeros(3, np.int64)}, "one label per x_train row"),
        ({"y_train": np.zeros(4, np.float32)}, "integer class labels, got float32"),
    ],
)
def test_a_training_context_that_would_train_wrongly_is_refused(
    change: dict[str, object], match: str
) -> None:
    from mobile_sim.backends import TrainContext

    ok: dict[str, object] = {"model": "digits_mlp", "x_train": np.zeros((4, 64), np.float32)}
    ok |= {"y_train": np.zeros(4, np.int64), "epochs": 1, "batch_size": 2, "lr": 0.1}
    TrainContext(**ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        TrainContext(**{**ok, **change})  # type: ignore[arg-type]


def test_a_cohort_of_fractional_device_indices_is_refused_not_truncated() -> None:
    # Before: [0.7, 1.2] was cast to devices [0, 1] and timed as such.
    fleet = SimFleet(10, seed=0)
    with pytest.raises(PopulationError, match="1-D integer array"):
        fleet.time_round(1, [0.7, 1.2], down_bytes=1, up_bytes=1, samples=1, epochs=1, per_round=1)  # type: ignore[list-item]
    with pytest.raises(PopulationError, match="1-D integer array"):
        fleet.dropped(1, [1.5])  # type: ignore[list-item]
    assert fleet.dropped(1, []).shape == (0,)


def test_times_whose_day_numbers_would_overflow_are_refused() -> None:
    # Before: a numpy "invalid value encountered in cast" warning and garbage availability.
    with pytest.raises(PopulationError, match=r"start_hour_utc must be within"):
        PopulationConfig(10, 0, start_hour_utc=1e300)
    pop = Population.build(10, seed=0)
    with pytest.raises(PopulationError, match=r"at most 1e\+15 s\), got 1e\+25"):
        pop.is_available(np.arange(10), 1e25)
    assert pop.is_available(np.arange(10), 1e15).dtype == np.bool_
