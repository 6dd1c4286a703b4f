"""Adversarial audit of distributed DP's noise and sensitivity (protocol/secagg/_noise.py,
sdk.secure.encode_for_plan, coordinator/secure/_dp.py): samplers against their exact laws,
the integer sensitivity against the device's real encoding, the dropout margin."""

from __future__ import annotations

import math
from fractions import Fraction

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as rdp_acc
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from coordinator.secure import (
    SecureConfig,
    ddg_epsilon,
    integer_sensitivity,
    l1_sensitivity,
    make_plan,
)
from coordinator.secure._dp import DistributedDpAccountant, account_released_groups
from protocol.secagg import CtrRandom, NoiseKind, discrete_gaussian, skellam
from protocol.secagg._noise import rational_variance
from sdk.secure import encode_for_plan

# -- samplers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma2", [Fraction(3), Fraction(1, 2)])
def test_discrete_gaussian_follows_its_exact_pmf(sigma2: Fraction) -> None:
    # Prepare: a fixed key, so the test is deterministic.
    n = 20_000
    x = discrete_gaussian(sigma2, n, CtrRandom(b"\x07" * 32))
    # Assert: chi-square against pmf ~ exp(-x^2 / (2 sigma2)) over |x| <= 5 sigma (+ tails).
    s2 = float(sigma2)
    top = max(2, math.ceil(5 * math.sqrt(s2)))
    support = np.arange(-top, top + 1)
    weights = np.exp(-(support.astype(np.float64) ** 2) / (2 * s2))
    far = np.arange(top + 1, top + 200, dtype=np.float64)
    tail = np.exp(-(far**2) / (2 * s2)).sum()
    norm = weights.sum() + 2 * tail
    expected = np.append(weights / norm, 2 * tail / norm) * n
    observed = np.append(
        [np.count_nonzero(x == v) for v in support], np.count_nonzero(abs(x) > top)
    )
    keep = expected >= 5  # pool sparse cells into the tail cell
    exp_k = np.append(expected[keep], expected[~keep].sum())
    obs_k = np.append(observed[keep], observed[~keep].sum())
    if exp_k[-1] == 0:
        exp_k, obs_k = exp_k[:-1], obs_k[:-1]
    assert stats.chisquare(obs_k, exp_k).pvalue > 1e-3
    # The variance parameter is (nearly) the variance for sigma >= 1; never far above it.
    if s2 >= 1:
        assert np.var(x) == pytest.approx(s2, rel=0.05)


def test_skellam_noise_has_variance_two_mu() -> None:
    mu = 5.5
    x = skellam(mu, 400_000, seed=b"\x01" * 32)
    assert np.var(x) == pytest.approx(2 * mu, rel=0.01)
    assert abs(np.mean(x)) < 5 * math.sqrt(2 * mu / x.size)


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-9, 1e9, allow_nan=False))
def test_the_sampled_variance_parameter_is_never_below_the_planned_one(sigma2: float) -> None:
    r = rational_variance(sigma2)
    assert r >= Fraction(sigma2)
    assert r - Fraction(sigma2) <= Fraction(1, 10**6)
    assert r.denominator <= 10**6


def test_device_noise_is_not_reproducible_from_public_inputs() -> None:
    # Everything public (plan, seeds of rounding and dither) fixed: without a key of its own
    # (os.urandom) the device's noise differs run to run; with the same key it repeats, so the
    # difference comes from the noise generator only.
    cfg = SecureConfig(coord_fraction=1.0, noise=NoiseKind.DISCRETE_GAUSSIAN, noise_multiplier=1.0)
    plan = make_plan(cfg, 1, 5, 16, np.arange(16, dtype=np.int64))
    u = np.linspace(-0.1, 0.1, 16, dtype=np.float32)

    def enc(noise_rng: CtrRandom | None) -> np.ndarray:
        v, _ = encode_for_plan(u, plan, 1, np.random.default_rng(0), noise_rng, node=0)
        return v

    assert not np.array_equal(enc(None), enc(None))
    assert np.array_equal(enc(CtrRandom(b"k" * 32)), enc(CtrRandom(b"k" * 32)))


# -- sensitivity of the real device encoding ------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=24, max_size=24),
    bits=st.integers(1, 8),
    clip=st.floats(0.01, 10.0),
    sigmas=st.floats(0.5, 4.0),
    k=st.integers(1, 24),
    dither=st.booleans(),
    rotate=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_device_moves_the_integer_sum_by_at_most_delta2(
    values: list[float],
    bits: int,
    clip: float,
    sigmas: float,
    k: int,
    dither: bool,
    rotate: bool,
    seed: int,
) -> None:
    # Prepare: the zero-out neighbour (same device, zero update) under the same randomness
    # (stochastic rounding from the same rng, the same public dither): the coupling the bound uses.
    cfg = SecureConfig(
        coord_fraction=1.0,
        value_bits=bits,
        clip_norm=clip,
        coord_bound_sigmas=sigmas,
        dither=dither,
        rotate=rotate,
    )
    indices = np.sort(np.random.default_rng(seed).choice(24, size=k, replace=False))
    plan = make_plan(cfg, 3, 5, 24, indices.astype(np.int64))
    u = np.array(values, dtype=np.float32)

    def levels(x: np.ndarray) -> np.ndarray:
        v, _ = encode_for_plan(x, plan, 1, np.random.default_rng(seed), None, node=2)
        return v[: plan.k].astype(np.int64)

    # Execute
    e = levels(u) - levels(np.zeros(24, dtype=np.float32))
    # Assert
    d2 = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, plan.k)
    assert float(np.linalg.norm(e)) <= d2 * (1 + 1e-12)
    assert float(np.abs(e).sum()) <= l1_sensitivity(d2, plan.k) * (1 + 1e-12)


# -- dropout margin -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 12, 40, 150])
@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.35])
@pytest.mark.parametrize("z", [0.6, 1.5])
def test_noise_left_after_the_allowed_dropouts_is_at_least_z_delta2(
    n: int, dropout: float, z: float
) -> None:
    # Prepare: |S_r| = 256 coordinates, so sigma^2 is large and the bound is Delta2 / (sqrt(n) sigma).
    cfg = SecureConfig(
        coord_fraction=1.0,
        noise=NoiseKind.DISCRETE_GAUSSIAN,
        noise_multiplier=z,
        expected_dropout=dropout,
    )
    plan = make_plan(cfg, 1, n, 256, np.arange(256, dtype=np.int64))
    d2 = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, plan.k)
    n_min = max(plan.threshold, math.ceil((1 - dropout) * n))
    # Assert: any n_min..n survivors carry total variance >= (z Delta2)^2 ...
    for survivors in range(n_min, n + 1):
        assert survivors * plan.noise_variance >= (z * d2) ** 2 * (1 - 1e-12)
        assert ddg_epsilon(d2, plan.noise_variance, survivors, plan.k) <= (1 / z) * (1 + 1e-9)
    # ... and the accountant charges the survivors actually present, not the plan's n_min:
    # fewer survivors than planned report a larger epsilon.
    if n_min - 1 >= 1:
        low, planned = DistributedDpAccountant(1e-5), DistributedDpAccountant(1e-5)
        account_released_groups(low, [(n_min - 1, plan)], z)
        account_released_groups(planned, [(n_min, plan)], z)
        assert low.epsilon() > planned.epsilon()


# -- the documented table, recomputed ------------------------------------------------------------


@pytest.mark.parametrize(
    ("z", "ddg", "skellam"),
    [
        (0.5, (10.7, 81.1), (10.8, 90.1)),
        (1.0, (4.73, 30.1), (4.75, 30.1)),
        (2.0, (2.17, 12.3), (2.17, 12.3)),
    ],
)
def test_secure_aggregation_md_epsilon_table_recomputes_independently(
    z: float, ddg: tuple[float, float], skellam: tuple[float, float]
) -> None:
    # docs/secure-aggregation.md, "What it costs in the MNIST-CNN setting": |S_r| = 16,634,
    # b = 6, C = 1, n = 10 with 9 survivors, delta = 1e-5. Recomputed here without Plume's
    # accountant: the discrete Gaussian (tau underflows to 0) as the Gaussian mechanism of
    # multiplier sqrt(9 sigma^2) / Delta2, Skellam from Agarwal et al.'s Thm. 3.5 written out.
    k, n, survivors = 16_634, 10, 9
    cfg = SecureConfig(
        coord_fraction=1.0,
        value_bits=6,
        clip_norm=1.0,
        noise=NoiseKind.DISCRETE_GAUSSIAN,
        noise_multiplier=z,
    )
    plan = make_plan(cfg, 1, n, k, np.arange(k, dtype=np.int64))
    d2 = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, plan.k)
    total = survivors * plan.noise_variance
    d1 = min(math.sqrt(k) * d2, d2 * d2)
    orders = np.array(rdp_acc.DEFAULT_RDP_ORDERS, dtype=np.float64)
    a = np.ceil(orders)
    sk_round = a * d2**2 / (2 * total) + np.minimum(
        ((2 * a - 1) * d2**2 + 6 * d1) / (4 * total**2), 3 * d1 / (2 * total)
    )
    for i, rounds in enumerate((1, 20)):
        gauss = rdp_acc.RdpAccountant()
        gauss.compose(dp_accounting.GaussianDpEvent(math.sqrt(total) / d2), rounds)
        ours = DistributedDpAccountant(1e-5)
        for _ in range(rounds):
            account_released_groups(ours, [(survivors, plan)], z)
        assert ours.epsilon() == pytest.approx(gauss.get_epsilon(1e-5), rel=1e-9)
        assert ours.epsilon() == pytest.approx(ddg[i], abs=0.006 * ddg[i])  # as printed
        sk_eps = rdp_acc.compute_epsilon(orders, rounds * sk_round, 1e-5)[0]
        assert sk_eps == pytest.approx(skellam[i], abs=0.006 * skellam[i])
        sk_plan = make_plan(
            SecureConfig(
                coord_fraction=1.0,
                value_bits=6,
                clip_norm=1.0,
                noise=NoiseKind.SKELLAM,
                noise_multiplier=z,
            ),
            1,
            n,
            k,
            np.arange(k, dtype=np.int64),
        )
        sk_ours = DistributedDpAccountant(1e-5)
        for _ in range(rounds):
            account_released_groups(sk_ours, [(survivors, sk_plan)], z)
        assert sk_ours.epsilon() == pytest.approx(sk_eps, rel=1e-9)
