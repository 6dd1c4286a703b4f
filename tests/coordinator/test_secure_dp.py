"""Tests of coordinator.secure._dp: exact Skellam RDP accounting, sensitivities, mixed histories."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from coordinator.secure import (
    RDP_ORDERS,
    DistributedDpAccountant,
    SecureConfig,
    SecureCoordinator,
    ddg_epsilon,
    integer_sensitivity,
    l1_sensitivity,
    make_plan,
    skellam_rdp,
)
from mobile_sim.secure import run_secure_round
from protocol.secagg import NoiseKind, Stage, quantize
from sdk.secure import SecureParticipant

DELTA = 1e-5


def _skellam_eps(l2: float, variance_per_device: float, n: int, k: int, rounds: int = 1) -> float:
    acc = DistributedDpAccountant(DELTA)
    for _ in range(rounds):
        acc.record_round(NoiseKind.SKELLAM, l2, variance_per_device, n, k)
    return acc.epsilon()


def _gaussian_eps(l2: float, total_variance: float, rounds: int = 1) -> float:
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(math.sqrt(total_variance) / l2), rounds)
    return float(acc.get_epsilon(DELTA))


def test_skellam_rdp_matches_the_theorem_by_hand() -> None:
    # Prepare: Delta2 = 3, Delta1 = 5, total variance V = 10 (Sk(5, 5)), order 2.
    # alpha D2^2 / (2V) = 18 / 20 = 0.9; min((3 * 9 + 30) / 400, 15 / 20) = min(0.1425, 0.75).
    # Execute
    got = skellam_rdp([2.0, 1.5, 3.0], 3.0, 5.0, 10.0)
    # Assert: a non-integer order uses the bound at the next integer
    assert got[0] == pytest.approx(0.9 + 0.1425, rel=1e-12)
    assert got[1] == got[0]
    assert got[2] == pytest.approx(27 / 20 + min((5 * 9 + 30) / 400, 0.75), rel=1e-12)
    with pytest.raises(ValueError):
        skellam_rdp([1.0], 3.0, 5.0, 10.0)
    with pytest.raises(ValueError):
        skellam_rdp([2.0], 3.0, 5.0, 0.0)


def test_l1_sensitivity_bounds() -> None:
    # Cauchy-Schwarz for large norms, Delta2^2 (integer entries) when Delta2 < sqrt(k).
    assert l1_sensitivity(100.0, 16) == pytest.approx(400.0)
    assert l1_sensitivity(2.0, 100) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        l1_sensitivity(1.0, 0)


def test_sensitivities_hold_for_coupled_rounding_of_neighbours() -> None:
    # Prepare: values at the worst case of the bound (all |v_j| = C / sqrt(k)) and in random
    # directions, against the zero-out neighbour; the device's quantizer runs on both with the
    # same rounding uniforms (generators seeded alike), which is the coupling of the proof.
    rng = np.random.default_rng(7)
    k, c, bits = 64, 1.0, 6
    cb = min(c, 2.5 * c / math.sqrt(k))
    s = ((1 << bits) - 1) / (2 * cb)
    l2 = integer_sensitivity(c, cb, bits, k)
    l1 = l1_sensitivity(l2, k)
    worst = 0.0
    vs = [np.full(k, c / math.sqrt(k))] + [rng.normal(size=k) for _ in range(50)]
    for i, v in enumerate(vs):
        v = v * min(1.0, c / np.linalg.norm(v))
        for j in range(20):
            # Execute
            q = quantize(v, cb, bits, np.random.default_rng([i, j])).astype(np.int64)
            q0 = quantize(np.zeros(k), cb, bits, np.random.default_rng([i, j])).astype(np.int64)
            e = (q - q0).astype(np.float64)
            # Assert
            assert np.linalg.norm(e) <= l2 + 1e-9
            assert np.abs(e).sum() <= l1 + 1e-9
            worst = max(worst, float(np.abs(e).sum()))
    # The rounding term is needed: sqrt(k) s C alone is exceeded.
    assert worst > math.sqrt(k) * s * c


def test_skellam_epsilon_against_the_theorem_with_compute_epsilon() -> None:
    # Prepare: the theorem in the Poisson-mean parametrization Sk(mu, mu), mu = n * m with
    # m = variance_per_device / 2, at the integer orders of the grid (the fractional ones are
    # dominated: the same RDP at a smaller order converts to a larger epsilon).
    l2, var_dev, n, k, rounds = 120.0, 900.0, 7, 50, 3
    l1 = min(math.sqrt(k) * l2, l2 * l2)
    mu = n * var_dev / 2
    orders = [a for a in RDP_ORDERS if a == int(a)]
    rdp = [
        rounds
        * (
            a * l2**2 / (4 * mu)
            + min(((2 * a - 1) * l2**2 + 6 * l1) / (16 * mu**2), 3 * l1 / (4 * mu))
        )
        for a in orders
    ]
    want, _ = rdp_privacy_accountant.compute_epsilon(orders, rdp, DELTA)
    # Execute
    got = _skellam_eps(l2, var_dev, n, k, rounds)
    # Assert
    assert got == pytest.approx(want, rel=1e-9)
    assert math.isfinite(got) and got > 0


def test_skellam_epsilon_monotone_in_noise_and_rounds() -> None:
    l2, n, k = 500.0, 10, 1000
    assert _skellam_eps(l2, 4e4, n, k) > _skellam_eps(l2, 1e5, n, k) > _skellam_eps(l2, 1e6, n, k)
    e = [_skellam_eps(l2, 1e5, n, k, r) for r in (1, 2, 5, 20)]
    assert all(math.isfinite(x) for x in e)
    assert e == sorted(e) and len(set(e)) == 4


@pytest.mark.parametrize(
    ("l2", "var_dev", "n", "k", "rounds"),
    [
        (10.0, 20.0, 5, 100, 1),
        (10.0, 20.0, 5, 100, 10),
        (300.0, 5e4, 20, 5000, 4),
        (3.0, 1.0, 3, 4, 1),
    ],
)
def test_skellam_never_below_the_equal_variance_gaussian(
    l2: float, var_dev: float, n: int, k: int, rounds: int
) -> None:
    sk = _skellam_eps(l2, var_dev, n, k, rounds)
    ga = _gaussian_eps(l2, var_dev * n, rounds)
    assert sk >= ga


def test_skellam_tends_to_the_gaussian_as_mu_grows() -> None:
    # Prepare: a counting query (Delta1 = Delta2 = 1, k = 1) under growing Skellam noise
    gaps = []
    for variance in (0.5, 5.0, 50.0, 5000.0):
        # Execute
        sk, ga = _skellam_eps(1.0, variance, 1, 1, 3), _gaussian_eps(1.0, variance, 3)
        gaps.append(sk / ga - 1)
    # Assert: clearly above the Gaussian at small mu, within 5% at large mu, shrinking between
    assert gaps[0] > 0.05
    assert gaps == sorted(gaps, reverse=True) and min(gaps) >= 0
    assert gaps[-1] < 0.05


def test_skellam_matches_the_gaussian_at_a_real_plan() -> None:
    # Prepare: the MNIST-CNN plan (|S_r| = 16,634, b = 6, C = 1, z = 1, 10 devices, 9 survive)
    d, k = 1_663_370, 16_634
    cfg = SecureConfig(
        noise=NoiseKind.SKELLAM, noise_multiplier=1.0, value_bits=6, coord_fraction=k / d
    )
    plan = make_plan(cfg, 1, 10, d, np.arange(k, dtype=np.int64))
    l2 = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, plan.k)
    # Execute
    sk = _skellam_eps(l2, plan.noise_variance, 9, plan.k, 20)
    ga = _gaussian_eps(l2, 9 * plan.noise_variance, 20)
    # Assert
    assert ga <= sk < 1.001 * ga


def test_ddg_path_unchanged_and_mixed_history_composes() -> None:
    # Prepare
    ddg_args = (200.0, 500.0, 8, 64)
    sk_args = (200.0, 800.0, 8, 64)
    ddg_only = DistributedDpAccountant(DELTA)
    ddg_only.record_round(NoiseKind.DISCRETE_GAUSSIAN, *ddg_args)
    mixed = DistributedDpAccountant(DELTA)
    # Execute
    mixed.record_round(NoiseKind.DISCRETE_GAUSSIAN, *ddg_args)
    mixed.record_round(NoiseKind.SKELLAM, *sk_args)
    # Assert: the DDG round is dp_accounting's zCDP event, as before
    rho = ddg_epsilon(*ddg_args) ** 2 / 2
    ref = rdp_privacy_accountant.RdpAccountant()
    ref.compose(dp_accounting.ZCDpEvent(rho))
    assert ddg_only.epsilon() == pytest.approx(ref.get_epsilon(DELTA), rel=1e-12)
    # ... and the mixed history adds the two RDP curves before converting
    l2, var_dev, n, k = sk_args
    curve = rho * np.asarray(RDP_ORDERS) + skellam_rdp(
        RDP_ORDERS, l2, l1_sensitivity(l2, k), var_dev * n
    )
    want, _ = rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, curve, DELTA)
    assert mixed.epsilon() == pytest.approx(want, rel=1e-12)
    assert mixed.epsilon() > max(ddg_only.epsilon(), _skellam_eps(*sk_args))
    assert mixed.rounds == 2
    mixed.record_round(NoiseKind.NONE, 1.0, 0.0, 5, 10)
    assert mixed.epsilon() == np.inf and mixed.rounds == 3
    assert DistributedDpAccountant(DELTA).epsilon() == 0.0


def test_skellam_refuses_no_noise() -> None:
    with pytest.raises(ValueError):
        DistributedDpAccountant(DELTA).record_round(NoiseKind.SKELLAM, 10.0, 0.0, 5, 10)


def skellam_fleet(
    n: int, d: int, seed: int, prefix: str = "d"
) -> tuple[
    list[str], dict[str, SecureParticipant], dict[str, tuple[np.ndarray, int]], SecureConfig
]:
    """n devices named prefix0.. with N(0, 0.01) updates (float32[d], weight 1), each with a
    SecureParticipant, and a Skellam config (noise multiplier 1)."""
    rng = np.random.default_rng(seed)
    devs = [f"{prefix}{i}" for i in range(n)]
    parts = {x: SecureParticipant(d) for x in devs}
    ups = {x: (rng.normal(0, 0.01, d).astype(np.float32), 1) for x in devs}
    cfg = SecureConfig(coord_fraction=0.1, noise=NoiseKind.SKELLAM, noise_multiplier=1.0)
    return devs, parts, ups, cfg


def test_restart_replay_gives_the_same_epsilon() -> None:
    # Prepare: two Skellam rounds through the secure coordinator
    d, n = 400, 5
    devs, parts, ups, cfg = skellam_fleet(n, d, seed=3)
    coord = SecureCoordinator(np.zeros(d, np.float32), cfg)
    stored = []
    for _ in range(2):
        out, _ = run_secure_round(coord, parts, ups)
        stored.append(json.loads(json.dumps(out.measurements["dp"])))  # what the store keeps
    # Execute: a restarted coordinator replays the committed rounds' measurements
    again = SecureCoordinator(np.zeros(d, np.float32), cfg)
    for dp in stored:
        again.replay_dp(dp)
    # Assert
    assert stored[-1]["rounds"] == 2 and "approximate" not in stored[-1]
    assert again.accountant.epsilon() == stored[-1]["epsilon"] == coord.accountant.epsilon()
    plan = make_plan(cfg, 1, n, d, np.arange(coord.k, dtype=np.int64))
    assert stored[0]["l1_sensitivity"] == l1_sensitivity(stored[0]["sensitivity"], plan.k)
    # A record written before this change (with its `approximate` flag) still replays.
    old = dict(stored[0], approximate=True)
    del old["l1_sensitivity"]
    legacy = SecureCoordinator(np.zeros(d, np.float32), cfg)
    legacy.replay_dp(old)
    assert legacy.accountant.epsilon() == stored[0]["epsilon"]


def _hook_close(coord: SecureCoordinator, seen: list[tuple[int, dict[str, object]]]) -> None:
    """Make `coord.close_round` pass a before_unmask hook (as the service does) that records
    (rounds accounted so far, the pending record)."""
    real_close = coord.close_round

    def close_with_hook(task, before_unmask=None, min_contributors=1):  # type: ignore[no-untyped-def]
        return real_close(
            task,
            lambda dp: seen.append((coord.accountant.rounds, dp)),
            min_contributors=min_contributors,
        )

    coord.close_round = close_with_hook  # type: ignore[method-assign]


def test_pending_dp_is_the_record_close_round_makes_and_records_nothing() -> None:
    # Prepare: Skellam rounds where one device drops before sending its masked input, with a
    # before_unmask hook; the same without DP
    d, n = 400, 5
    devs, parts, ups, cfg = skellam_fleet(n, d, seed=4)
    coord = SecureCoordinator(np.zeros(d, np.float32), cfg)
    plain = SecureCoordinator(np.zeros(d, np.float32), SecureConfig(coord_fraction=0.1))
    seen: list[tuple[int, dict[str, object]]] = []
    seen_plain: list[tuple[int, dict[str, object]]] = []
    _hook_close(coord, seen)
    _hook_close(plain, seen_plain)
    # Execute
    outs = [run_secure_round(coord, parts, ups, drop_at={"d4": Stage.MASKED_INPUT})[0]]
    outs.append(run_secure_round(coord, parts, ups)[0])
    plain_out, _ = run_secure_round(plain, parts, ups)
    # Assert: before each unmask, with nothing yet recorded for that round, the hook saw
    # exactly the record then made; without DP it is not called
    assert seen == [(0, outs[0].measurements["dp"]), (1, outs[1].measurements["dp"])]
    assert outs[0].measurements["dp"]["survivors"] == n - 1 and coord.accountant.rounds == 2
    assert seen_plain == [] and plain_out.committed and "dp" not in plain_out.measurements
