"""Adversarial review of the DP code: each test pins a bound or a refusal that a silent bug broke."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

import sdk.secure
from compression import ModelSpec, SparseUpdate
from coordinator.aggregators import AdaptiveClip, ClientUpdate, DPMean, build_aggregator
from coordinator.engine import EngineConfig, RoundEngine
from coordinator.privacy import FixedSizeSampling, PoissonSampling
from coordinator.secure import (
    RDP_ORDERS,
    DistributedDpAccountant,
    SecureCoordinator,
    integer_sensitivity,
    make_plan,
)
from coordinator.secure._dp import ddg_epsilon, ddg_tau
from coordinator.service.rounds import validate_task
from mobile_sim.secure import run_secure_round
from protocol.secagg import CtrRandom, NoiseKind, SecurePlan, discrete_gaussian
from protocol.secagg._noise import rational_variance

from .test_secure_dp import skellam_fleet
from .test_service_support import task_config


def _updates(rows: np.ndarray, weights: list[float] | None = None) -> list[ClientUpdate]:
    ws = weights if weights is not None else [1.0] * len(rows)
    return [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense(r.astype(np.float32)), w)
        for i, (r, w) in enumerate(zip(rows, ws, strict=True))
    ]


def _tau_by_hand(sigma2: float, n: int) -> float:
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * sigma2 * j / (j + 1)) for j in range(1, n))


# -- central DP (DPMean) --------------------------------------------------------------------


def test_poisson_sampling_needs_a_fixed_denominator() -> None:
    # Under add/remove the report count is private: (sum + noise) / count is not the accounted
    # release, so an accounting DPMean must divide by a public constant.
    with pytest.raises(ValueError, match="fixed denominator"):
        DPMean(1.0, sampling=PoissonSampling(0.1))
    DPMean(1.0, sampling=PoissonSampling(0.1), denominator=10.0)  # the documented form
    DPMean(1.0, sampling=FixedSizeSampling(100, 10))  # fixed size: the count is public


def test_more_reports_than_the_accounted_cohort_is_refused_before_any_release() -> None:
    # Prepare: epsilon is computed for cohorts of 3 out of 100; a round brings 4 reports
    # (e.g. over-selection that was not counted in sample=).
    proc = DPMean(1.0, sampling=FixedSizeSampling(100, 3), seed=0).create(2)
    state = proc.initialize()
    # Execute / Assert
    with pytest.raises(ValueError, match="cohort of 3"):
        proc.next(state, _updates(np.ones((4, 2))))
    out = proc.next(state, _updates(np.ones((3, 2))))  # the accounted size is fine
    assert out.measurements["rounds"] == 1


@pytest.mark.parametrize("outer", ["", "adam+"])
def test_an_engine_selecting_more_than_the_accounted_cohort_is_refused(outer: str) -> None:
    # Prepare: dp accounts cohorts of 10; 30% over-selection makes the engine select 13 and
    # keep the first 10 reports, so DPMean itself would never see more than 10.
    spec = ModelSpec.from_json([{"name": "w", "shape": [4]}])
    agg = build_aggregator(f"{outer}dp:clip=1,z=1,population=100,sample=10+fedavg")
    params = np.zeros(4, np.float32)
    # Execute / Assert
    with pytest.raises(ValueError, match="selects 13"):
        RoundEngine(spec, params, agg, EngineConfig(clients_per_round=10, over_selection=1.3))
    RoundEngine(spec, params, agg, EngineConfig(clients_per_round=10))  # 10 selected: fine
    wide = build_aggregator(f"{outer}dp:clip=1,z=1,population=100,sample=13+fedavg")
    RoundEngine(spec, params, wide, EngineConfig(clients_per_round=10, over_selection=1.3))


def test_the_service_refuses_such_a_task_when_it_is_created() -> None:
    # The engine is only built once the initial model arrives; the task is refused before.
    dp = "dp:clip=1,z=1,population=100,sample=10+fedavg"
    with pytest.raises(ValueError, match="sample=10 but 13"):
        validate_task(task_config(clients_per_round=10, over_selection=1.3, aggregator=dp))
    validate_task(task_config(clients_per_round=10, aggregator=dp))


def test_measurements_release_no_exact_count_of_clipped_reports() -> None:
    # Prepare: two of four reports exceed C = 1. Round measurements reach every registered
    # device (GET /v1/rounds/{id}), so only noised statistics may appear in them.
    rows = np.zeros((4, 3))
    rows[:, 0] = [5.0, 3.0, 0.1, 0.2]
    fixed = DPMean(1.0, clip=1.0, seed=1).create(3)
    adaptive = DPMean(1.0, clip=AdaptiveClip(1.0, 0.5, count_stddev=1.0), seed=1).create(3)
    # Execute
    m_fixed = fixed.next(fixed.initialize(), _updates(rows)).measurements
    m_adapt = adaptive.next(adaptive.initialize(), _updates(rows)).measurements
    # Assert
    assert "clipped" not in m_fixed and "clipped" not in m_adapt
    noised = m_adapt["unclipped_fraction_noised"]
    assert noised != pytest.approx(0.5, abs=1e-9)  # the count query's noise is in it


def test_example_counts_do_not_change_the_dp_mean() -> None:
    # Weighting by self-reported example counts would make the sensitivity depend on them:
    # the same reports with any weights give the same (seeded) release.
    rows = np.random.default_rng(4).normal(size=(5, 6))
    a = DPMean(1.0, clip=1.0, seed=2).create(6)
    b = DPMean(1.0, clip=1.0, seed=2).create(6)
    out_a = a.next(a.initialize(), _updates(rows, [1.0] * 5))
    out_b = b.next(b.initialize(), _updates(rows, [1e9, 1.0, 3.0, 0.0, 7.0]))
    np.testing.assert_array_equal(out_a.result, out_b.result)


# -- distributed DP: discrete Gaussian accounting ---------------------------------------------


def test_ddg_epsilon_first_branch_carries_two_tau_k() -> None:
    # Prepare: sigma = 1/2 keeps tau large enough to matter (tau ~ 3.9 at n = 50), and the
    # first branch of the bound is the smallest. From Kairouz et al.'s Prop. 14,
    # alpha D^2/(2 n s^2) + tau k <= alpha (D^2/(2 n s^2) + tau k): eps^2 = D^2/(n s^2) + 2 tau k.
    sens, sigma2, n, k = 100.0, 0.25, 50, 4
    tau = _tau_by_hand(sigma2, n)
    want = math.sqrt(sens**2 / (n * sigma2) + 2.0 * tau * k)
    assert want < sens / math.sqrt(n * sigma2) + tau * math.sqrt(k)  # the first branch binds
    # Execute / Assert
    assert ddg_epsilon(sens, sigma2, n, k) == pytest.approx(want, rel=1e-12)


def test_ddg_tau_sums_every_survivor_term() -> None:
    # Prepare: more than 10,000 survivors; the terms grow with j, so dropping the tail
    # under-counts tau, and with it epsilon.
    sens, sigma2, n, k = 10.0, 1.0, 30_000, 1_000
    tau = _tau_by_hand(sigma2, n)
    # Execute / Assert
    assert ddg_tau(sigma2, n) == pytest.approx(tau, rel=1e-9)
    want = min(
        math.sqrt(sens**2 / (n * sigma2) + 2 * tau * k),
        sens / math.sqrt(n * sigma2) + tau * math.sqrt(k),
    )
    assert ddg_epsilon(sens, sigma2, n, k) == pytest.approx(want, rel=1e-9)
    assert want > sens / math.sqrt(n * sigma2) + _tau_by_hand(sigma2, 10_000) * math.sqrt(k)


def test_ddg_below_sigma_one_half_uses_one_survivors_noise() -> None:
    # Kairouz et al.'s bound needs sigma >= 1/2. Below it, the valid bound is that of one
    # survivor's discrete Gaussian (Delta2 / sigma); the rest of the noise only helps.
    sens, sigma2, n, k = 3.0, 0.2, 3, 1
    assert ddg_epsilon(sens, sigma2, n, k) == pytest.approx(sens / math.sqrt(sigma2))
    # ... and above it the bound never exceeds that one either
    assert ddg_epsilon(1.0, 0.3, 2, 1) <= 1.0 / math.sqrt(0.3)


def test_ddg_accountant_composes_the_corrected_bound() -> None:
    acc = DistributedDpAccountant(1e-5)
    acc.record_round(NoiseKind.DISCRETE_GAUSSIAN, 100.0, 0.25, 50, 4)
    rho = ddg_epsilon(100.0, 0.25, 50, 4) ** 2 / 2
    np.testing.assert_allclose(acc.rdp(), rho * np.asarray(RDP_ORDERS), rtol=1e-12)


# -- distributed DP: the samplers -------------------------------------------------------------


@pytest.mark.parametrize("sigma2", [85462.123, 0.3, 2.0 / 3.0, 341847.39, 1e-3, 7])
def test_sampled_variance_is_never_below_the_accounted_one(sigma2: float) -> None:
    # limit_denominator rounds to the nearest fraction, below sigma2 about half the time.
    got = rational_variance(sigma2)
    assert got >= Fraction(sigma2)
    assert got.denominator <= 10**6
    assert got - Fraction(sigma2) <= Fraction(1, 10**6)
    with pytest.raises(ValueError):
        rational_variance(0.0)


def test_discrete_gaussian_matches_its_pmf() -> None:
    # Prepare: the exact pmf of N_Z(0, 2) on [-8, 8] (the mass outside is < 1e-7).
    sigma2, count = 2.0, 6_000
    support = np.arange(-8, 9)
    pmf = np.exp(-(support**2) / (2 * sigma2))
    pmf /= pmf.sum()
    # Execute
    x = discrete_gaussian(sigma2, count, CtrRandom(b"\x07" * 32))
    # Assert: a chi-square statistic on the central cells (16 degrees of freedom at most;
    # the 0.999 quantile of chi2(16) is 39.3)
    observed = np.array([np.count_nonzero(x == v) for v in support])
    expected = pmf * count
    keep = expected >= 5
    chi2 = float((((observed - expected) ** 2) / expected)[keep].sum())
    assert chi2 < 39.3
    assert int(np.count_nonzero(np.abs(x) > 8)) <= 1


# -- distributed DP: what the server saw --------------------------------------------------------


def test_a_sum_unmasked_then_refused_is_still_accounted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: six devices under Skellam noise; node 0 sends uniform ring elements as values
    # (a forged input), so the group aborts *after* the server unmasked the noisy sum. The
    # server (honest but curious) has read that sum: the round costs privacy, committed or not.
    d, n = 400, 6
    devs, parts, ups, cfg = skellam_fleet(n, d, seed=11, prefix="dev-")
    honest = sdk.secure.encode_for_plan
    forge_rng = np.random.default_rng(5)

    def forged(
        u: Any, plan: SecurePlan, w: int, r: Any, noise_rng: Any = None, node: Any = None
    ) -> Any:
        vector, sent = honest(u, plan, w, r, noise_rng, node)
        if node == 0:
            vector[: plan.k] = forge_rng.integers(0, 1 << plan.ring_bits, plan.k, np.uint64)
        return vector, sent

    monkeypatch.setattr(sdk.secure, "encode_for_plan", forged)
    coord = SecureCoordinator(np.zeros(d, np.float32), cfg)
    # Execute
    out, _ = run_secure_round(coord, parts, ups)
    # Assert: refused, yet accounted exactly as an honest round of six survivors would be
    assert not out.committed and coord.version == 0
    plan = make_plan(cfg, 1, n, d, np.arange(coord.k, dtype=np.int64))
    want = DistributedDpAccountant(cfg.dp_delta)
    sens = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, plan.k)
    want.record_round(NoiseKind.SKELLAM, sens, plan.noise_variance, n, plan.k)
    assert coord.accountant.rounds == 1 == out.measurements["dp"]["rounds"]
    assert out.measurements["dp"]["epsilon"] == pytest.approx(want.epsilon(), rel=1e-12)
    assert out.measurements["dp"]["survivors"] == n
