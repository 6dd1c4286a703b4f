"""The simulated round against an independent replay of the coordinator's rule (issue #7: "each
round's duration comes from each device's download, compute and upload times; deadline,
over-selection and stragglers behave as the coordinator does").

The reference below does not call `SimClock.plan_round`. It computes each device's time from
the formula docs/simulator.md states (latency + down_bytes x 8 / down_bps, samples x epochs x
cost / compute_sps, latency + up_bytes x 8 / up_bps) and replays the arrivals one by one through
the coordinator's `submit` test (coordinator/service/rounds.py: an upload is refused when
`clock() >= deadline` or the round already holds `target` reports; the round closes at its
`target`-th report, else at the deadline). Cohorts are drawn with ties and with deadlines that
land exactly on an arrival, the edges a continuous draw never hits."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest

from mobile_sim.clock import ClockError, SimClock, check_deadline
from mobile_sim.population import Population, ProfileBatch
from mobile_sim.runner import SimConfig

POP = Population.build(5_000, seed=11, availability="always")


@dataclasses.dataclass(frozen=True)
class Replay:
    kept: list[int]  # device ids in arrival order
    stragglers: list[int]  # cohort order
    dropped: list[int]  # cohort order
    duration_s: float


def documented_times(
    prof: ProfileBatch,
    down: list[float],
    up: list[float],
    samples: list[float],
    epochs: int,
    cost: float,
) -> list[float]:
    """Each device's download + compute + upload time, one device at a time in plain floats."""
    out = []
    for i in range(len(prof)):
        lat = float(prof.latency_s[i])
        t_down = lat + down[i] * 8.0 / float(prof.down_bps[i])
        t_comp = samples[i] * epochs * cost / float(prof.compute_sps[i])
        t_up = lat + up[i] * 8.0 / float(prof.up_bps[i])
        out.append(t_down + t_comp + t_up)
    return out


def replay(ids: list[int], finish: list[float], target: int, deadline: float | None) -> Replay:
    """The coordinator's submit rule, upload by upload in arrival order (ties: cohort order).
    `finish` is +inf for a device that dropped out (it never uploads)."""
    kept: list[int] = []
    refused: set[int] = set()
    closed_at: float | None = None
    for pos in sorted(range(len(ids)), key=lambda p: (finish[p], p)):
        t = finish[pos]
        if math.isinf(t):
            continue  # never arrives
        if (deadline is not None and t >= deadline) or len(kept) >= target:
            refused.add(ids[pos])
            continue
        kept.append(ids[pos])
        if len(kept) == target:
            closed_at = t
    if closed_at is not None:
        duration = closed_at
    elif deadline is not None:
        duration = deadline
    else:
        alive = [t for t in finish if not math.isinf(t)]
        duration = max(alive) if alive else 0.0
    return Replay(
        kept=kept,
        stragglers=[d for d in ids if d in refused],
        dropped=[d for d, t in zip(ids, finish, strict=True) if math.isinf(t)],
        duration_s=duration,
    )


@dataclasses.dataclass(frozen=True)
class Case:
    prof: ProfileBatch
    down: list[float]
    up: list[float]
    samples: list[float]
    epochs: int
    cost: float
    per_round: int
    rng: np.random.Generator


def _case(seed: int) -> Case:
    """A random cohort, its transfers and a deadline, with ties and exact-deadline hits."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    ids = rng.choice(len(POP), size=n, replace=False)
    prof = POP.profiles(ids)
    if seed % 3 == 0:
        # Few distinct speeds and no transfer: many devices finish at the same instant.
        prof = dataclasses.replace(
            prof,
            compute_sps=rng.choice([10.0, 20.0, 40.0], size=n),
            latency_s=np.zeros(n),
        )
    prof = dataclasses.replace(prof, dropout_p=rng.choice([0.0, 0.3, 0.9], size=n))
    tie = seed % 3 == 0
    down = [0.0] * n if tie else rng.integers(0, 8_000_000, size=n).astype(float).tolist()
    up = [0.0] * n if tie else rng.integers(0, 200_000, size=n).astype(float).tolist()
    samples = rng.integers(1, 200, size=n).astype(float).tolist()
    if tie:
        samples = [80.0] * n
    epochs = int(rng.integers(0 if seed % 17 == 0 else 1, 4))
    cost = float(rng.choice([1.0, 0.5, 2.5]))
    per_round = int(rng.integers(1, n + 3))
    return Case(prof, down, up, samples, epochs, cost, per_round, rng)


@pytest.mark.parametrize("seed", range(120))
def test_plan_round_is_the_coordinators_race(seed: int) -> None:
    # Prepare
    c = _case(seed)
    prof, rng = c.prof, c.rng
    clock = SimClock(seed, cost_per_sample=c.cost)
    round_id = seed % 5
    times = documented_times(prof, c.down, c.up, c.samples, c.epochs, c.cost)
    dropped = clock.dropout_mask(prof, round_id).tolist()
    finish = [math.inf if d else t for t, d in zip(times, dropped, strict=True)]
    alive = sorted(t for t in finish if not math.isinf(t))
    kind = seed % 4
    if kind == 0 or not alive:
        deadline: float | None = None
    elif kind == 1:
        deadline = alive[int(rng.integers(0, len(alive)))]  # exactly on an arrival
    elif kind == 2:
        deadline = float(rng.uniform(0.01, 2 * alive[-1] + 1.0))
    else:
        deadline = 604_800.0  # the coordinator's bound: never reached here

    # Execute
    timing = clock.plan_round(
        prof,
        np.array(c.down),
        np.array(c.up),
        np.array(c.samples),
        epochs=c.epochs,
        per_round=c.per_round,
        deadline_s=deadline,
        round_id=round_id,
    )

    # Assert
    ref = replay(prof.device_ids.tolist(), finish, c.per_round, deadline)
    assert timing.kept.tolist() == ref.kept
    assert timing.stragglers.tolist() == ref.stragglers
    assert timing.dropped.tolist() == ref.dropped
    assert timing.duration_s == pytest.approx(ref.duration_s, rel=1e-12, abs=0.0)
    np.testing.assert_allclose(timing.finish_s, finish, rtol=1e-12)
    s = timing.summary()
    assert (s["selected"], s["kept"], s["stragglers"], s["dropped"]) == (
        len(prof),
        len(ref.kept),
        len(ref.stragglers),
        len(ref.dropped),
    )
    assert s["kept"] + s["stragglers"] + s["dropped"] == s["selected"]
    if alive:
        assert s["median_device_s"] == pytest.approx(float(np.median(alive)), rel=1e-12)
    else:
        assert math.isnan(s["median_device_s"])


def test_cost_per_sample_scales_only_the_compute_time() -> None:
    # Prepare: a device at 40 samples/s, 8 Mbit/s down and 1 Mbit/s up, 30 ms latency
    prof = dataclasses.replace(
        POP.profiles(np.array([7])),
        compute_sps=np.array([40.0]),
        down_bps=np.array([8e6]),
        up_bps=np.array([1e6]),
        latency_s=np.array([0.03]),
    )

    # Execute: 2 MB down, 50 kB up, 120 samples x 3 epochs at cost 2.5
    down, comp, up = SimClock(0, cost_per_sample=2.5).device_times(prof, 2e6, 5e4, 120, 3)

    # Assert: 0.03 + 2 s down, 120 * 3 * 2.5 / 40 = 22.5 s, 0.03 + 0.4 s up
    assert down.tolist() == pytest.approx([2.03], rel=1e-12)
    assert comp.tolist() == pytest.approx([22.5], rel=1e-12)
    assert up.tolist() == pytest.approx([0.43], rel=1e-12)


def test_a_round_where_everyone_drops_out() -> None:
    # Prepare: every device certain (near enough) to drop out
    prof = POP.profiles(np.arange(6))
    prof = dataclasses.replace(prof, dropout_p=np.full(6, 0.999999999))
    clock = SimClock(2)

    # Execute
    with_deadline = clock.plan_round(
        prof, 0, 0, 10, epochs=1, per_round=3, deadline_s=45.0, round_id=1
    )
    without = clock.plan_round(prof, 0, 0, 10, epochs=1, per_round=3, deadline_s=None, round_id=1)

    # Assert: nobody reports; the server waits for its deadline, the idealisation ends at 0
    for t in (with_deadline, without):
        assert t.kept.size == 0 and t.stragglers.size == 0
        assert t.dropped.tolist() == list(range(6))
    assert with_deadline.duration_s == 45.0
    assert without.duration_s == 0.0


def test_dropout_is_a_pure_function_of_seed_round_and_device() -> None:
    # Prepare: the same devices in two orders and as part of a larger batch
    prof = dataclasses.replace(POP.profiles(np.arange(4_000)), dropout_p=np.full(4_000, 0.5))
    perm = np.random.default_rng(0).permutation(4_000)
    clock = SimClock(9)

    # Execute
    base = clock.dropout_mask(prof, 3)
    shuffled = clock.dropout_mask(prof.take(perm), 3)
    subset = clock.dropout_mask(prof.take(np.arange(100, 200)), 3)
    other_round = clock.dropout_mask(prof, 4)
    other_seed = SimClock(10).dropout_mask(prof, 3)

    # Assert: the same device drops out wherever it sits; rounds and seeds draw afresh and
    # independently (about half agree)
    np.testing.assert_array_equal(shuffled, base[perm])
    np.testing.assert_array_equal(subset, base[100:200])
    for other in (other_round, other_seed):
        agree = float((other == base).mean())
        assert 0.45 < agree < 0.55
    # each draw is a uniform in (0, 1) against the device's own probability
    assert 0.45 < float(base.mean()) < 0.55
    never = dataclasses.replace(prof, dropout_p=np.zeros(4_000))
    assert not clock.dropout_mask(never, 3).any()


def test_the_dropout_draw_is_uniform_against_each_probability() -> None:
    # Prepare: 20,000 devices, three probabilities
    prof = POP.profiles(np.arange(5_000))
    clock = SimClock(4)
    for p in (0.06, 0.1, 0.7):
        rates = [
            float(
                clock.dropout_mask(dataclasses.replace(prof, dropout_p=np.full(5_000, p)), r).mean()
            )
            for r in range(4)
        ]
        # Execute / Assert: within five standard errors of p over 20,000 draws
        se = math.sqrt(p * (1 - p) / 20_000)
        assert abs(float(np.mean(rates)) - p) < 5 * se


@pytest.mark.parametrize(
    ("per_round", "over_selection"),
    [(10, "1.3"), (7, "1.3"), (1, "1.3"), (100, "1.3"), (3, "1.5"), (10, "1.0"), (9, "1.1")],
)
def test_the_over_selected_cohort_is_the_coordinators_count(
    per_round: int, over_selection: str
) -> None:
    # Execute
    cfg = SimConfig(
        dataset="digits",
        clients=200,
        per_round=per_round,
        fleet="realistic",
        over_selection=float(over_selection),
    )

    # Assert: ceil(per_round x over_selection) in exact decimal arithmetic (10 x 1.3 is 13,
    # though 10 * 1.3 is 13.000000000000002 in floats), as the coordinator counts it
    assert cfg.engine_config().cohort_size == math.ceil(per_round * Fraction(over_selection))


def test_zero_epochs_and_a_zero_check_in_period_are_accepted() -> None:
    # Prepare
    prof = POP.profiles(np.arange(5))
    clock = SimClock(1)

    # Execute: no local epoch trains nothing; a period of 0 (`--checkin-period 0`) is an
    # instant check-in
    _, comp, _ = clock.device_times(prof, 1_000, 1_000, 50, 0)
    delays = clock.checkin_delays(prof.device_ids, 2, 0.0)

    # Assert
    assert comp.tolist() == [0.0] * 5
    assert delays.tolist() == [0.0] * 5
    with pytest.raises(ClockError, match="epochs"):
        clock.device_times(prof, 1_000, 1_000, 50, -1)
    with pytest.raises(ClockError, match="period_s"):
        clock.checkin_delays(prof.device_ids, 2, -1.0)


@pytest.mark.parametrize("start_s", [-1.0, math.inf, math.nan])
def test_a_clock_cannot_start_before_zero_or_at_no_time(start_s: float) -> None:
    with pytest.raises(ClockError, match="start_s"):
        SimClock(0, start_s=start_s)


@pytest.mark.parametrize("deadline", [1e-3, 0.5, 1.0, 604_800.0])
def test_every_deadline_the_coordinator_takes_is_taken(deadline: float) -> None:
    # Prepare: (0, 604800] s, the coordinator's bound (validate_task)
    prof = POP.profiles(np.arange(3))

    # Execute
    check_deadline(deadline)
    timing = SimClock(0).plan_round(
        prof, 10**15, 10**15, 10, epochs=1, per_round=3, deadline_s=deadline, round_id=0
    )

    # Assert: nobody moves a petabyte by then, so the round lasts its deadline
    assert timing.duration_s == deadline
    assert timing.kept.size == 0


@pytest.mark.parametrize("deadline", [0.0, -1.0, 604_800.5, math.inf, math.nan])
def test_a_deadline_the_coordinator_refuses_is_refused(deadline: float) -> None:
    with pytest.raises(ClockError, match="deadline_s"):
        check_deadline(deadline)


def test_devices_draw_independently_of_their_neighbours_ids() -> None:
    # Prepare: 2^16 devices whose ids differ from a partner's in one bit, coin-flip dropout
    ids = np.arange(2**16, dtype=np.int64)
    prof = dataclasses.replace(POP.profiles(ids % len(POP)), device_ids=ids)
    prof = dataclasses.replace(prof, dropout_p=np.full(ids.size, 0.5))
    clock = SimClock(5)

    for r in (1, 2):
        # Execute
        drop = clock.dropout_mask(prof, r)
        phase = clock.checkin_fraction(ids, r)

        # Assert: the check-in phases are all distinct, and a device's dropout agrees with
        # that of the device one bit away from it about half the time (a draw that mixed the
        # id in weakly, say with | instead of ^, made such pairs draw the same number)
        assert np.unique(phase).size == ids.size
        for bit in range(16):
            agree = float((drop == drop[ids ^ (1 << bit)]).mean())
            assert abs(agree - 0.5) < 5 * math.sqrt(0.25 / (ids.size // 2)), (r, bit, agree)
