"""Adversarial audit of central DP (DPMean, clip_update, PrivacyAccountant): sensitivity, noise,
accounting recomputed independently with dp_accounting (docs/privacy.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from compression import CodecConfig, CodecError, ModelSpec, SparseUpdate, UpdateCodec
from coordinator.aggregators import AdaptiveClip, ClientUpdate, DPMean, FedAvg
from coordinator.aggregators._base import NonFiniteReportError
from coordinator.aggregators._clip import clip_update
from coordinator.privacy import FixedSizeSampling, PoissonSampling, PrivacyAccountant

ROOT = Path(__file__).resolve().parents[2]
REL = dp_accounting.NeighboringRelation


def _dense(values: np.ndarray) -> SparseUpdate:
    v = np.asarray(values, dtype=np.float32)
    return SparseUpdate(np.arange(v.size, dtype=np.int64), v, int(v.size))


def _norm(u: SparseUpdate) -> float:
    return math.sqrt(u.squared_norm())


# -- sensitivity --------------------------------------------------------------------------------


def test_clip_update_never_leaves_the_norm_above_the_clip() -> None:
    # Prepare: updates of every scale; before the fix about half the clipped float32 results
    # had a norm above C (rounding each scaled value to float32 rounds up half the time).
    rng = np.random.default_rng(0)
    over = []
    for _ in range(400):
        d = int(rng.integers(1, 2000))
        u = _dense(rng.standard_normal(d) * rng.uniform(0.01, 1e4))
        clip = float(rng.uniform(1e-3, 10.0))
        # Execute
        n = _norm(clip_update(u, clip))
        if n > clip:
            over.append(n / clip - 1)
    # Assert
    assert over == []


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        min_size=1,
        max_size=40,
    ),
    clip=st.floats(1e-6, 1e6),
)
def test_clip_update_bound_holds_for_any_finite_report(values: list[float], clip: float) -> None:
    u = _dense(np.array(values))
    out = clip_update(u, clip)
    assert _norm(out) <= clip or _norm(u) <= clip and out is u
    assert np.array_equal(out.indices, u.indices)


def _released_total(dp: DPMean, updates: list[ClientUpdate], size: int) -> np.ndarray:
    """The noised sum DPMean releases (result x denominator), float64[size]."""
    proc = dp.create(size)
    out = proc.next(proc.initialize(), updates)
    denom = dp.denominator if dp.denominator is not None else len(updates)
    return out.result.astype(np.float64) * denom


_report = st.tuples(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=6, max_size=6),
    st.floats(0.0, 1e12),  # a self-reported example count: must not matter
)


@settings(max_examples=60, deadline=None)
@given(
    others=st.lists(_report, min_size=1, max_size=8),
    mine=_report,
    replacement=_report,
    clip=st.floats(0.01, 100.0),
)
def test_one_device_moves_the_released_sum_by_at_most_the_sensitivity(
    others: list[tuple[list[float], float]],
    mine: tuple[list[float], float],
    replacement: tuple[list[float], float],
    clip: float,
) -> None:
    # Prepare: the same noise on both sides (fixed seed), so the difference of the releases is
    # the difference of the clipped sums; weights are arbitrary self-reported counts.
    def reports(own: tuple[list[float], float] | None) -> list[ClientUpdate]:
        rows = [*others, own] if own is not None else list(others)
        return [ClientUpdate(f"d{i}", _dense(np.array(v)), w) for i, (v, w) in enumerate(rows)]

    fixed = DPMean(1.0, clip=clip, inner=FedAvg(uniform=False), denominator=10.0, seed=7)
    # Execute
    base = _released_total(fixed, reports(mine), 6)
    swapped = _released_total(fixed, reports(replacement), 6)
    removed = _released_total(fixed, reports(None), 6)
    # Assert: replace-one moves it by <= 2C, add/remove by <= C (float32 mean: 1e-5 slack).
    assert np.linalg.norm(base - swapped) <= 2 * clip * (1 + 1e-5)
    assert np.linalg.norm(base - removed) <= clip * (1 + 1e-5)


_SPEC = ModelSpec.from_shapes([("w", (5, 6)), ("b", (6,))])  # d = 36
_CODEC = UpdateCodec(_SPEC, CodecConfig(topk=1.0, bits=32))  # decodes any v1 frame


@settings(max_examples=30, deadline=None)
@given(
    mine=st.lists(
        st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=36, max_size=36
    ),
    other=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=36, max_size=36),
    bits=st.sampled_from([1, 2, 4, 8, 16, 32]),
    topk=st.sampled_from([0.1, 0.5, 1.0]),
    weight=st.floats(1.0, 1e9),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_device_frame_moves_the_released_sum_by_at_most_c(
    mine: list[float],
    other: list[float],
    bits: int,
    topk: float,
    weight: float,
    seed: int,
) -> None:
    # Prepare: the device controls its update (any finite float32), the compression (top-k,
    # bits, stochastic rounding) and its declared example count; the server decodes the frame
    # as the engine does and DPMean clips what comes out.
    codec = UpdateCodec(_SPEC, CodecConfig(topk=topk, bits=bits, block=8))
    rng = np.random.default_rng(seed)
    try:
        frame, _ = codec.encode(np.array(mine, dtype=np.float32), rng, weight)
    except ValueError:  # fp16 cannot carry it: the honest encoder refuses, nothing to send
        assume(False)
    try:
        decoded = _CODEC.decode_frame(frame)
    except CodecError:  # e.g. a scale x level that overflows float32: refused at upload (4xx)
        return
    base_frame, _ = codec.encode(np.array(other, dtype=np.float32), rng, 1.0)
    base = _CODEC.decode_frame(base_frame)
    dp = DPMean(0.5, clip=0.3, inner=FedAvg(uniform=False), denominator=4.0, seed=1)
    with_me = [
        ClientUpdate("other", base.update, base.weight),
        ClientUpdate("me", decoded.update, decoded.weight),
    ]
    # Execute
    a = _released_total(dp, with_me, 36)
    b = _released_total(dp, with_me[:1], 36)
    # Assert: add/remove of this device moves the noised sum by at most C.
    assert np.all(np.isfinite(decoded.update.values))
    assert np.linalg.norm(a - b) <= 0.3 * (1 + 1e-5)


def test_dpmean_refuses_a_non_finite_report_by_name() -> None:
    # Before: the NaN report's clip factor was NaN and the whole noised mean came out NaN.
    dp = DPMean(1.0, clip=1.0, seed=0)
    proc = dp.create(3)
    bad = ClientUpdate("evil", _dense(np.array([1.0, np.nan, 0.0])), 1.0)
    good = ClientUpdate("ok", _dense(np.array([0.1, 0.2, 0.3])), 1.0)
    with pytest.raises(NonFiniteReportError, match="evil"):
        proc.next(proc.initialize(), [good, bad])


# -- noise --------------------------------------------------------------------------------------


def _zero_reports(n: int, size: int) -> list[ClientUpdate]:
    return [ClientUpdate(f"d{i}", _dense(np.zeros(size)), 1.0) for i in range(n)]


def test_central_noise_stddev_is_z_times_clip() -> None:
    # Prepare: zero updates, so the released sum is the noise alone.
    size, z, clip = 200_000, 1.7, 0.4
    dp = DPMean(z, clip=clip, denominator=25.0, seed=11)
    proc = dp.create(size)
    # Execute
    out = proc.next(proc.initialize(), _zero_reports(5, size))
    noise = out.result.astype(np.float64) * 25.0
    # Assert: stddev z C within 1% (its standard error here is 0.16%), mean 0.
    assert np.std(noise) == pytest.approx(z * clip, rel=0.01)
    assert abs(np.mean(noise)) < 5 * z * clip / math.sqrt(size)
    assert out.measurements["noise_stddev"] == pytest.approx(z * clip / 25.0)


def test_adaptive_clip_splits_the_noise_so_the_pair_is_one_gaussian_of_multiplier_z() -> None:
    # Prepare: the count query (sensitivity 1/2, stddev sigma_b) and the sum (sensitivity C,
    # stddev z_u C) together are one Gaussian mechanism of multiplier z iff
    # z^-2 = z_u^-2 + (2 sigma_b)^-2 (Andrew et al. 2021).
    z, denom, size = 0.8, 40.0, 50_000
    dp = DPMean(z, clip=AdaptiveClip(initial=0.5), denominator=denom, seed=5)
    sigma_b = dp.count_stddev(denom)
    z_u = dp.update_noise_multiplier(denom)
    assert z_u**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2, rel=1e-12)
    proc = dp.create(size)
    state = proc.initialize()
    # Execute: every report has norm 0 <= C, so centred count = n / 2 exactly.
    n = 8
    out = proc.next(state, _zero_reports(n, size))
    # Assert: the update noise is z_u C (C of that round), not z C.
    noise = out.result.astype(np.float64) * denom
    assert np.std(noise) == pytest.approx(z_u * 0.5, rel=0.015)
    # ... and the count noise is sigma_b: (fraction - 1/2) denom - n/2 over many rounds.
    small = DPMean(z, clip=AdaptiveClip(initial=0.5), denominator=denom, seed=6).create(1)
    st_ = small.initialize()
    draws = []
    for _ in range(3000):
        o = small.next(st_, _zero_reports(n, 1))
        st_ = o.state
        draws.append((o.measurements["unclipped_fraction_noised"] - 0.5) * denom - n / 2)
    assert np.std(draws) == pytest.approx(sigma_b, rel=0.05)


def test_unseeded_noise_takes_a_fresh_os_seed_every_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: pin the OS seeds so the test is deterministic. Before, one PCG64 stream seeded
    # once served every round: an adversary who knows one round's reports (hence its noise)
    # could in principle recover the stream and predict the next round's noise.
    from coordinator.aggregators import _dp

    seeds = iter([101, 202, 303])
    monkeypatch.setattr(_dp, "_os_seed", lambda: next(seeds))
    size, z, clip = 64, 1.3, 0.5
    proc = DPMean(z, clip=clip, denominator=1.0).create(size)
    state = proc.initialize()
    got = []
    # Execute
    for _ in range(3):
        out = proc.next(state, _zero_reports(2, size))
        state = out.state
        got.append(out.result)
    # Assert: round r's noise is exactly N(0, (zC)^2) from the r-th OS seed, nothing else.
    for r, seed in enumerate([101, 202, 303]):
        want = np.random.default_rng(seed).normal(0.0, z * clip, size=size).astype(np.float32)
        np.testing.assert_array_equal(got[r], want)


# -- accounting, recomputed with dp_accounting directly ------------------------------------------


def _wor_rdp(population: int, sample: int, z: float, rounds: int, delta: float) -> float:
    acc = rdp.RdpAccountant(neighboring_relation=REL.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        population, sample, dp_accounting.GaussianDpEvent(z / 2)
    )
    acc.compose(event, rounds)
    return float(acc.get_epsilon(delta))


def test_the_documented_example_recomputes_independently() -> None:
    # docs/privacy.md: z = 2.0, 1,400 devices, 140 per round, budget 8 -> 34 rounds, eps 7.95.
    acc = PrivacyAccountant(2.0, FixedSizeSampling(1400, 140))
    eps34 = _wor_rdp(1400, 140, 2.0, 34, 1e-5)
    assert acc.epsilon(34, 1e-5) == pytest.approx(eps34, rel=1e-12)
    assert round(eps34, 2) == 7.95
    assert acc.epsilon(35, 1e-5) > 8.0  # so 34 is the last round the budget allows


def test_the_committed_privacy_benchmark_epsilons_recompute_independently() -> None:
    # bench/results/privacy.json: every recorded epsilon_by_round from its own z, N, m, delta.
    res = json.loads((ROOT / "bench/results/privacy.json").read_text())
    n, m, delta = res["simulated_devices"], res["devices_per_round"], res["delta"]
    direct: dict[tuple[float, int], float] = {}
    checked = 0
    for run in res["runs"]:
        if run["epsilon"] is None:
            continue
        z = res["noise_multipliers"][str(run["epsilon"]).removesuffix(".0")]
        for rnd in (1, len(run["epsilon_by_round"])):
            if (z, rnd) not in direct:
                direct[z, rnd] = _wor_rdp(n, m, z, rnd, delta)
            assert run["epsilon_by_round"][rnd - 1] == pytest.approx(direct[z, rnd], rel=1e-9)
            checked += 1
        assert run["epsilon_spent"] <= run["epsilon"]
        # noise on the mean = z C / m
        assert run["noise_stddev_on_mean"] == pytest.approx(z * run["clip"] / m, rel=1e-6)
    assert checked >= 16


@pytest.mark.parametrize(("q", "z", "rounds"), [(0.01, 1.1, 500), (0.1, 2.0, 40)])
def test_poisson_accounting_matches_dp_accounting_pld_and_rdp(
    q: float, z: float, rounds: int
) -> None:
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    direct_pld = pld.PLDAccountant()
    direct_pld.compose(event, rounds)
    direct_rdp = rdp.RdpAccountant()
    direct_rdp.compose(event, rounds)
    sampling = PoissonSampling(q)
    ours_pld = PrivacyAccountant(z, sampling, "pld").epsilon(rounds, 1e-5)
    ours_rdp = PrivacyAccountant(z, sampling, "rdp").epsilon(rounds, 1e-5)
    assert ours_pld == pytest.approx(direct_pld.get_epsilon(1e-5), rel=1e-9)
    assert ours_rdp == pytest.approx(direct_rdp.get_epsilon(1e-5), rel=1e-9)
    assert ours_pld <= ours_rdp  # PLD is the tighter of the two


def test_full_cohort_replace_one_is_the_gaussian_of_sensitivity_two_c() -> None:
    # m = N: no amplification; replacing a device moves the sum by 2C, so the round is the
    # Gaussian mechanism with multiplier z / 2 (closed-form RDP alpha / (2 (z/2)^2)).
    z, rounds = 3.0, 10
    ours = PrivacyAccountant(z, FixedSizeSampling(50, 50)).epsilon(rounds, 1e-6)
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(z / 2), rounds)
    assert ours == pytest.approx(acc.get_epsilon(1e-6), rel=1e-9)


def test_an_overstated_population_under_reports_epsilon_as_documented() -> None:
    # docs/privacy.md, assumption 1: nothing checks population= against the selection pool.
    claimed = PrivacyAccountant(1.0, FixedSizeSampling(10_000, 100)).epsilon(100, 1e-5)
    real = PrivacyAccountant(1.0, FixedSizeSampling(1_000, 100)).epsilon(100, 1e-5)
    assert (round(claimed, 1), round(real, 1)) == (11.2, 83.9)
    assert claimed == pytest.approx(_wor_rdp(10_000, 100, 1.0, 100, 1e-5), rel=1e-12)
