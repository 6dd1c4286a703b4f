"""docs/simulator.md's population model, clock formula and FedProx synthetic(alpha, beta),
checked against the code (helper L's audit, stop 54).

Statistical checks draw a large seeded population lazily (`Population.profiles` on ids, as
the product does) and compare empirical statistics with the values the doc's table states.
Each tolerance is Z standard errors of the estimator at the sample size used (Z = 5: a
correct model fails a given check with probability below 1e-6; the draws are seeded, so a
pass or a failure is deterministic). Standard errors used:

- a share p from n draws: sqrt(p (1 - p) / n);
- the median of log X, X log-normal with log-sd sigma, from n draws: sigma sqrt(pi / 2) / sqrt(n)
  (the sample median's asymptotic variance, pi sigma^2 / (2 n));
- a standard deviation s from n normal draws: s / sqrt(2 (n - 1));
- a mean of n draws with sd s: s / sqrt(n).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mobile_sim.clock import SimClock
from mobile_sim.datasets.synthetic import load_synthetic
from mobile_sim.population import DEFAULT_TIERS, Population, ProfileBatch, Tier

Z = 5.0
N = 200_000
SEED = 54


@pytest.fixture(scope="module")
def fleet() -> tuple[Population, ProfileBatch]:
    pop = Population.build(10**9, seed=SEED)  # lazily: only the N looked-at devices exist
    return pop, pop.profiles(np.arange(N, dtype=np.int64))


def _share_ok(observed: float, p: float, n: int) -> None:
    se = math.sqrt(p * (1 - p) / n)
    assert abs(observed - p) <= Z * se, (observed, p, Z * se)


# --- the doc's table ("What a device has") --------------------------------------------------

# tier: (share, compute median, sigma, down median, sigma, up median, sigma, latency ms, sigma,
#        dropout, memory GiB, home wifi), exactly as docs/simulator.md's table states them.
DOC_TABLE = {
    Tier.LOW: (0.30, 30, 0.35, 35.5, 0.8, 15.3, 0.8, 120, 0.5, 0.10, (2, 3, 4), 0.75),
    Tier.MID: (0.50, 90, 0.30, 88.9, 0.7, 40.7, 0.7, 70, 0.45, 0.08, (4, 6), 0.85),
    Tier.HIGH: (0.20, 250, 0.25, 237, 0.6, 122, 0.6, 40, 0.4, 0.06, (8, 12), 0.92),
}


def test_tier_shares(fleet: tuple[Population, ProfileBatch]) -> None:
    _, prof = fleet
    for k, spec in enumerate(DEFAULT_TIERS):
        _share_ok(float(np.mean(prof.tier_index == k)), DOC_TABLE[spec.tier][0], N)


@pytest.mark.parametrize(
    ("attr", "col", "scale"),
    [("compute_sps", 1, 1.0), ("down_bps", 3, 1e6), ("up_bps", 5, 1e6), ("latency_s", 7, 1e-3)],
)
def test_lognormal_medians_and_sigmas(
    fleet: tuple[Population, ProfileBatch], attr: str, col: int, scale: float
) -> None:
    _, prof = fleet
    values = getattr(prof, attr)
    for k, spec in enumerate(DEFAULT_TIERS):
        row = DOC_TABLE[spec.tier]
        median, sigma = row[col] * scale, row[col + 1]
        logs = np.log(values[prof.tier_index == k])
        n = logs.size
        se_median = sigma * math.sqrt(math.pi / 2) / math.sqrt(n)
        assert abs(np.median(logs) - math.log(median)) <= Z * se_median, (attr, spec.tier)
        se_sd = sigma / math.sqrt(2 * (n - 1))
        assert abs(logs.std(ddof=1) - sigma) <= Z * se_sd, (attr, spec.tier, logs.std())


def test_dropout_memory_and_home_wifi(fleet: tuple[Population, ProfileBatch]) -> None:
    _, prof = fleet
    for k, spec in enumerate(DEFAULT_TIERS):
        row = DOC_TABLE[spec.tier]
        sel = prof.tier_index == k
        assert np.all(prof.dropout_p[sel] == row[9])
        sizes = row[10]
        mem = prof.memory_mb[sel]
        assert set(np.unique(mem)) == {g * 1024.0 for g in sizes}  # MiB = GiB x 1024
        for g in sizes:  # uniform over the tier's sizes
            _share_ok(float(np.mean(mem == g * 1024.0)), 1 / len(sizes), int(sel.sum()))
        _share_ok(float(np.mean(prof.home_wifi[sel])), row[11], int(sel.sum()))
    # "fleet mean 0.082"
    assert math.isclose(sum(r[0] * r[9] for r in DOC_TABLE.values()), 0.082)
    mean_p = float(prof.dropout_p.mean())
    # dropout_p is a function of the tier: its sd over devices is at most 0.02
    assert abs(mean_p - 0.082) <= Z * 0.02 / math.sqrt(N)


def test_time_zone_and_nights(fleet: tuple[Population, ProfileBatch]) -> None:
    _, prof = fleet
    tz = prof.tz_offset_h
    assert np.all(tz == np.round(tz))
    # round(N(0, 2)): mean 0, variance 4 + 1/12 (rounding adds about a uniform's 1/12)
    sd_tz = math.sqrt(4 + 1 / 12)
    assert abs(tz.mean()) <= Z * sd_tz / math.sqrt(N)
    assert abs(tz.std(ddof=1) - sd_tz) <= Z * sd_tz / math.sqrt(2 * (N - 1))
    # overnight charge starts N(22.5, 1.5) local (stored modulo 24)
    start = np.mod(prof.night_start_h - 22.5 + 12.0, 24.0) - 12.0
    assert abs(start.mean()) <= Z * 1.5 / math.sqrt(N)
    assert abs(start.std(ddof=1) - 1.5) <= Z * 1.5 / math.sqrt(2 * (N - 1))
    # lasts N(7.5, 1.5) clipped to [2, 12]: the clip is 3.7 and 3 sds away, so the middle
    # of the distribution is the normal's; check the median and the clip bounds
    hours = prof.night_hours
    assert hours.min() >= 2.0 and hours.max() <= 12.0
    se_med = 1.5 * math.sqrt(math.pi / 2) / math.sqrt(N)
    assert abs(np.median(hours) - 7.5) <= Z * se_med
    _share_ok(float(np.mean(hours == 12.0)), 1 - 0.5 * math.erfc(-3.0 / math.sqrt(2)), N)


def _day_pop(**kwargs: object) -> Population:
    # One time zone, identical nights, no jitter: the eligible share at a chosen local hour is
    # then a product of the doc's rates.
    base: dict[str, object] = {
        "tz_sigma_h": 0.0,
        "night_start_sd_h": 0.0,
        "night_jitter_sd_h": 0.0,
        "night_hours_sd": 0.0,
        "start_hour_utc": 0.0,
    }
    base.update(kwargs)
    return Population.build(N, seed=SEED, **base)


def test_night_skip_and_home_wifi_rates() -> None:
    # At local 02:00 every device is inside its 22:30-06:00 night: eligible = home wifi and
    # the night not skipped. The doc: skipped on 10 % of nights; home wifi 0.75/0.85/0.92.
    pop = _day_pop(day_session_p=0.0)
    wifi = sum(r[0] * r[11] for r in DOC_TABLE.values())
    p = wifi * (1 - 0.10)
    for day in range(3):  # a fresh skip draw every night
        frac = pop.available_fraction((24 * day + 2) * 3600.0, sample=N)
        _share_ok(frac, p, N)


def test_night_jitter() -> None:
    # Every night 22:30-06:00 local, never skipped, jittered N(0, 0.5 h) night to night: among
    # home-wifi devices, 23:00 is covered when the jitter is below 0.5 h (Phi(1) = 0.8413),
    # 06:30 the next morning when it is above 0.5 h (0.1587); the two nights' draws are
    # independent, so 23:00 on two nights is covered for both with probability 0.8413^2.
    pop = _day_pop(day_session_p=0.0, skip_night_p=0.0, night_jitter_sd_h=0.5)
    prof = pop.profiles(np.arange(N, dtype=np.int64))
    wifi = prof.home_wifi
    n = int(wifi.sum())
    phi1 = 0.5 * math.erfc(-1.0 / math.sqrt(2))
    at = lambda hour: pop.available_mask(prof, hour * 3600.0)[wifi]  # noqa: E731
    first, morning, second = at(23.0), at(30.5), at(47.0)
    _share_ok(float(first.mean()), phi1, n)
    _share_ok(float(morning.mean()), 1 - phi1, n)
    _share_ok(float((first & second).mean()), phi1**2, n)
    assert not pop.available_mask(prof, 23.0 * 3600.0)[~wifi].any()  # nights need home wifi


def test_daytime_session_rate() -> None:
    # No nights (every night skipped); a session of exactly 8 h starting U(09, 17) h covers
    # 17:00 whatever its start, so the share eligible then is P(session) x P(on wifi).
    pop = _day_pop(skip_night_p=1.0, day_session_hours=(8.0, 8.0))
    _share_ok(pop.available_fraction(17 * 3600.0 - 1.0, sample=N), 0.35 * 0.6, N)
    # Before 09:00 no session has started, at 01:00 the previous day's has ended.
    assert pop.available_fraction(9 * 3600.0 - 1.0, sample=N) == 0.0
    assert pop.available_fraction(25 * 3600.0 + 1.0, sample=N) == 0.0
    # The default length U(0.5, 2.5) h: at 12:00, P(start in (12 - L, 12]) = E[L] / 8 = 1.5/8
    pop = _day_pop(skip_night_p=1.0)
    _share_ok(pop.available_fraction(12 * 3600.0, sample=N), 0.35 * 0.6 * 1.5 / 8, N)


# --- reproducibility --------------------------------------------------------------------------


def _same(a: ProfileBatch, b: ProfileBatch) -> None:
    for name in ProfileBatch.__dataclass_fields__:
        if name != "tiers":
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_device_independent_of_fleet_size_order_and_batch() -> None:
    ids = np.arange(500, dtype=np.int64)
    small = Population.build(500, seed=7)
    big = Population.build(10**12, seed=7)
    ref = small.profiles(ids)
    _same(big.profiles(ids), ref)
    perm = np.random.default_rng(1).permutation(ids)
    _same(big.profiles(perm), ref.take(perm))  # any order
    _same(big.profiles(ids[::-1][:10]), ref.take(ids[::-1][:10]))  # any subset
    assert big.profile(123) == ref[123]  # one at a time
    for t in (0.0, 3600.0 * 7, 86_400.0 * 3 + 11):
        np.testing.assert_array_equal(
            big.available_mask(big.profiles(perm), t), small.is_available(ids, t)[perm]
        )


def test_seeds_differ_and_repeat() -> None:
    ids = np.arange(2000, dtype=np.int64)
    a, b = Population.build(2000, seed=1), Population.build(2000, seed=2)
    _same(a.profiles(ids), Population.build(2000, seed=1).profiles(ids))
    pa, pb = a.profiles(ids), b.profiles(ids)
    assert not np.any(pa.compute_sps == pb.compute_sps)
    assert np.mean(pa.tier_index == pb.tier_index) < 0.5  # 0.38 if independent
    sa = a.sample_available(50, 6 * 3600.0, np.random.default_rng(3))
    np.testing.assert_array_equal(sa, a.sample_available(50, 6 * 3600.0, np.random.default_rng(3)))


# --- the clock's formula, hand-computed --------------------------------------------------------


def _batch(
    compute: list[float], down: list[float], up: list[float], lat: list[float], drop: list[float]
) -> ProfileBatch:
    n = len(compute)
    f = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
    return ProfileBatch(
        device_ids=np.arange(10, 10 + n, dtype=np.int64),
        tier_index=np.zeros(n, dtype=np.int8),
        compute_sps=f(compute),
        down_bps=f(down),
        up_bps=f(up),
        latency_s=f(lat),
        dropout_p=f(drop),
        memory_mb=np.full(n, 4096.0),
        tz_offset_h=np.zeros(n),
        night_start_h=np.full(n, 22.5),
        night_hours=np.full(n, 7.5),
        home_wifi=np.ones(n, dtype=np.bool_),
    )


def test_clock_formula_by_hand() -> None:
    # t_down = 0.1 + 1e6 B * 8 / 8e6 = 1.1; t_compute = 100 * 2 * 1.0 / 50 = 4;
    # t_up = 0.1 + 1e5 * 8 / 1e6 = 0.9; finish 6.0. Device 2: 0.2 + 2 + 100*2/25 + 0.2 + 1.6.
    prof = _batch([50, 25], [8e6, 4e6], [1e6, 5e5], [0.1, 0.2], [0, 0])
    clock = SimClock(0)
    t = clock.plan_round(prof, 1e6, 1e5, 100, epochs=2, per_round=2, deadline_s=None, round_id=0)
    np.testing.assert_allclose(t.download_s, [1.1, 2.2])
    np.testing.assert_allclose(t.compute_s, [4.0, 8.0])
    np.testing.assert_allclose(t.upload_s, [0.9, 1.8])
    np.testing.assert_allclose(t.finish_s, [6.0, 12.0])
    assert t.duration_s == pytest.approx(12.0)
    # cost_per_sample scales compute only: 0.5 halves it
    half = SimClock(0, cost_per_sample=0.5).plan_round(
        prof, 1e6, 1e5, 100, epochs=2, per_round=2, deadline_s=None, round_id=0
    )
    np.testing.assert_allclose(half.finish_s, [4.0, 8.0])


def test_clock_target_deadline_and_stragglers() -> None:
    # Finish times 6, 12, 3.5 (compute 4, 10, 1.5 on top of 2 s of transfers), none dropped.
    prof = _batch([50, 20, 400 / 3], [8e6] * 3, [8e5] * 3, [0.0] * 3, [0.0] * 3)
    clock = SimClock(0)
    plan = lambda per_round, deadline: clock.plan_round(  # noqa: E731
        prof, 1e6, 1e5, 100, epochs=2, per_round=per_round, deadline_s=deadline, round_id=0
    )
    t = plan(2, 60.0)  # closes when the 2nd report arrives: 6 s; the 12 s one straggles
    np.testing.assert_allclose(t.finish_s, [6.0, 12.0, 3.5])
    assert t.kept.tolist() == [12, 10] and t.stragglers.tolist() == [11]
    assert t.duration_s == pytest.approx(6.0)
    t = plan(3, 10.0)  # cannot fill by the deadline: closes at it, the 12 s one is dropped
    assert t.kept.tolist() == [12, 10] and t.stragglers.tolist() == [11]
    assert t.duration_s == 10.0
    t = plan(2, 6.0)  # a report landing exactly at the deadline is refused
    assert t.kept.tolist() == [12] and t.duration_s == 6.0
    # a dropped device never reports: the round waits for the deadline
    prof_drop = _batch([50, 20], [8e6] * 2, [8e5] * 2, [0.0] * 2, [0.0, 1.0])
    t = clock.plan_round(prof_drop, 1e6, 1e5, 100, epochs=2, per_round=2, deadline_s=30.0,
                         round_id=4)  # fmt: skip
    assert t.dropped.tolist() == [11] and t.kept.tolist() == [10] and t.duration_s == 30.0


def test_dropout_rate_matches_tier_probability(fleet: tuple[Population, ProfileBatch]) -> None:
    _, prof = fleet
    clock = SimClock(SEED)
    for k, spec in enumerate(DEFAULT_TIERS):
        sub = prof.take(np.flatnonzero(prof.tier_index == k))
        dropped = clock.dropout_mask(sub, round_id=3)
        _share_ok(float(dropped.mean()), DOC_TABLE[spec.tier][9], len(sub))


# --- FedProx synthetic(alpha, beta) ----------------------------------------------------------


class _Recorder:
    """A numpy Generator that notes every normal() call's loc, scale and result."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.calls: list[tuple[object, object, np.ndarray]] = []

    def normal(self, loc: object = 0.0, scale: object = 1.0, size: object = None) -> object:
        out = self._rng.normal(loc, scale, size)
        self.calls.append((loc, scale, np.asarray(out)))
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self._rng, name)


def test_synthetic_follows_fedprox(monkeypatch: pytest.MonkeyPatch) -> None:
    alpha, beta, k_dev = 0.7, 2.0, 300
    recorders: list[_Recorder] = []
    real = np.random.default_rng

    def fake(seed: object = None) -> _Recorder:
        r = _Recorder(real(seed))  # type: ignore[arg-type]
        recorders.append(r)
        return r

    monkeypatch.setattr(np.random, "default_rng", fake)
    data = load_synthetic(alpha, beta, num_devices=k_dev, seed=5, max_samples=60)
    monkeypatch.undo()
    (rec,) = recorders
    calls = rec.calls[2:]  # the two shared (iid) draws first
    assert len(calls) == 6 * k_dev
    cov = np.arange(1, 61, dtype=np.float64) ** -1.2
    u, big_b = [], []
    for d in range(k_dev):
        cu, cb, cw, cbias, cv, cx = calls[6 * d : 6 * d + 6]
        assert (cu[0], cu[1]) == (0.0, alpha) and (cb[0], cb[1]) == (0.0, beta)
        u_k, b_k = float(cu[2]), float(cb[2])
        u.append(u_k)
        big_b.append(b_k)
        # W_k, b_k ~ N(u_k, 1) (one mean for both), v_k ~ N(B_k, 1), x ~ N(v_k, diag(j^-1.2))
        assert cw[0] == u_k and cw[1] == 1.0 and cw[2].shape == (10, 60)
        assert cbias[0] == u_k and cbias[1] == 1.0 and cbias[2].shape == (10,)
        assert cv[0] == b_k and cv[1] == 1.0 and cv[2].shape == (60,)
        np.testing.assert_array_equal(cx[0], cv[2])
        np.testing.assert_allclose(np.asarray(cx[1]) ** 2, cov)
        # labels: argmax of W_k x + b_k (float64 x, before the float32 cast)
        x = cx[2]
        cut = data.train_groups[d]
        y = np.argmax(x @ cw[2].T + cbias[2], axis=1)
        np.testing.assert_array_equal(data.y_train[cut], y[: cut.size])
    # u_k ~ N(0, alpha^2), B_k ~ N(0, beta^2): the standard deviation is alpha (beta), not its
    # square root (the paper writes N(0, alpha); its generator's scale is alpha)
    for draws, s in ((u, alpha), (big_b, beta)):
        arr = np.asarray(draws)
        assert abs(arr.mean()) <= Z * s / math.sqrt(k_dev)
        assert abs(arr.std(ddof=1) - s) <= Z * s / math.sqrt(2 * (k_dev - 1))
    # sizes: int(lognormal(4, 2)) + 50, capped at max_samples (here 60: P(lognormal < 10) = 0.198)
    sizes = np.array(
        [g.size + t.size for g, t in zip(data.train_groups, data.test_groups, strict=True)]
    )
    assert sizes.min() >= 50 and sizes.max() <= 60
    # 90 % train, rounded to the nearest sample (FedProx truncates: int(0.9 n); the doc says so)
    train = np.array([g.size for g in data.train_groups])
    np.testing.assert_array_equal(train, np.round(0.9 * sizes).astype(np.int64))
    p_below = 0.5 * math.erfc(-(math.log(10) - 4) / 2 / math.sqrt(2))
    _share_ok(float(np.mean(sizes < 60)), p_below, k_dev)
