"""Review tests of coordinator.secure: a device's out-of-range weight must not reach the model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import sdk.secure
from coordinator.secure import SecureConfig, SecureCoordinator, public_seed, split_groups
from mobile_sim.secure import run_secure_round
from protocol.secagg import SecurePlan
from sdk.secure import SecureParticipant

from ._secure_inproc import forge_weight

D = 2000


def _fleet(n: int) -> tuple[list[str], dict[str, SecureParticipant], dict[str, Any]]:
    rng = np.random.default_rng(11)
    devs = [f"dev-{i:03d}" for i in range(n)]
    parts = {d: SecureParticipant(D) for d in devs}
    ups = {d: (rng.normal(0, 0.01, D).astype(np.float32), 1) for d in devs}
    return devs, parts, ups


def test_grouped_round_drops_only_the_group_with_a_forged_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: three groups of four under dither; node 0 of group 0 sends weight 2 (a dithered
    # plan needs w = 1). Before, decoding raised ValueError out of close_round, and the
    # service abandoned the whole round (fail_close) instead of one group.
    devs, parts, ups = _fleet(12)
    cfg = SecureConfig(coord_fraction=0.1, group_size=4, clip_norm=2.0)
    groups = split_groups(sorted(devs), 4, public_seed(cfg.seed, 1, b"groups"))
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    forge_weight(monkeypatch, 0, lambda plan: 2, times=1)  # groups run in order: group 0
    # Execute
    out, _ = run_secure_round(coord, parts, ups)
    # Assert: group 0 aborts with a reason, the other two commit
    assert out.committed and out.aborted_groups == 1
    assert set(out.contributors) == set(groups[1]) | set(groups[2])
    assert any("weight" in r for r in out.measurements["abort_reasons"])


def test_forged_weight_cannot_scale_the_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: no dither, w_max = 1; one of six devices sends -4 mod 2^m as its weight, so the
    # total weight is 1 and the decoded "mean" is the six devices' level sum (about 3 C' on
    # every coordinate, outside [-C', C']). Before, the round committed it.
    devs, parts, ups = _fleet(6)
    cfg = SecureConfig(coord_fraction=0.1, dither=False, clip_norm=2.0)
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    forge_weight(monkeypatch, 0, lambda plan: (1 << plan.ring_bits) - 4)
    # Execute
    out, _ = run_secure_round(coord, parts, ups)
    # Assert: refused, model unchanged
    assert not out.committed and coord.version == 0
    np.testing.assert_array_equal(coord.params, np.zeros(D, np.float32))


def test_groups_draw_independent_dither() -> None:
    # Prepare: twelve devices with one identical update, three groups of four. Every group's
    # node i used to draw the same public dither (equal-size groups had byte-identical plans,
    # and the dither is keyed by the plan's rotation seed and the node number), so the three
    # group means carried the same rounding error and averaging them did not reduce it.
    rng = np.random.default_rng(0)
    u = rng.normal(0, 0.003, D).astype(np.float32)
    devs = [f"dev-{i:03d}" for i in range(12)]
    parts = {d: SecureParticipant(D) for d in devs}
    ups = {d: (u.copy(), 1) for d in devs}
    cfg = SecureConfig(coord_fraction=0.5, group_size=4, clip_norm=2.0)
    plans = [
        sr.plan for sr in SecureCoordinator(np.zeros(D, np.float32), cfg).open_round(devs).groups
    ]
    # Execute
    out, _ = run_secure_round(SecureCoordinator(np.zeros(D, np.float32), cfg), parts, ups)
    # Assert: the groups' plans differ, and the mean's rounding error has the variance of 12
    # independent dithers (1/12 of one device's 1/12 level^2), not of 4 (1/4)
    assert len({p.to_bytes() for p in plans}) == 3
    idx, step = plans[0].indices, 2 * plans[0].coord_bound / 7
    ratio = float(np.var(out.update[idx] - u[idx])) / (step * step / 12)
    assert 0.05 < ratio < 0.13, ratio


def test_grouped_dp_accounts_for_the_group_with_the_least_noise() -> None:
    from protocol.secagg import NoiseKind, Stage

    # Prepare: 11 devices in groups of 4 and 7 under Skellam noise. The per-device variance
    # is calibrated per group ((z D2)^2 / n_min), so the 7-group's devices add less each; two
    # of them drop, leaving 5 x 82.3 = 411 of summed noise against group 0's 4 x 144 = 576.
    # Before, the round was accounted with group 0's variance times the fewest survivors (576).
    devs, parts, ups = _fleet(11)
    cfg = SecureConfig(
        coord_fraction=0.05, group_size=4, noise=NoiseKind.SKELLAM, noise_multiplier=1.0
    )
    task = SecureCoordinator(np.zeros(D, np.float32), cfg).open_round(devs)
    small, big = task.groups
    assert (len(small.device_ids), len(big.device_ids)) == (4, 7)
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    # Execute
    out, _ = run_secure_round(
        coord, parts, ups, dict.fromkeys(big.device_ids[:2], Stage.MASKED_INPUT)
    )
    # Assert: the accounted release is the 7-group's, whose sum carries the least noise
    dp = out.measurements["dp"]
    assert out.committed and out.aborted_groups == 0
    assert dp["survivors"] == 5 and dp["noise_variance_per_device"] == big.plan.noise_variance
    assert dp["survivors"] * dp["noise_variance_per_device"] < 4 * small.plan.noise_variance


@pytest.mark.parametrize("group_size", [None, 5])
def test_dithered_round_is_exact_with_a_dropout_at_every_stage(group_size: int | None) -> None:
    from protocol.secagg import Stage

    # Prepare: 20 devices, one dropping before each of the four stages (in grouped mode, one
    # in each of the four groups)
    devs, parts, ups = _fleet(20)
    cfg = SecureConfig(coord_fraction=0.1, clip_norm=2.0, group_size=group_size)
    groups = split_groups(sorted(devs), group_size, public_seed(cfg.seed, 1, b"groups"))
    stages = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK]
    victims = [groups[i % len(groups)][i] for i in range(4)]
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    # Execute
    out, _ = run_secure_round(coord, parts, ups, dict(zip(victims, stages, strict=True)))
    # Assert: the mean of exactly what the contributors sent (dropped-at-unmask included)
    assert out.committed and out.aborted_groups == 0
    assert set(out.contributors) == set(devs) - set(victims[:3])
    sent = [ups[d][0].astype(np.float64) - parts[d].residual for d in out.contributors]
    np.testing.assert_allclose(out.update, np.mean(sent, axis=0), atol=1e-6)


def test_plan_with_threshold_at_most_half_the_degree_is_refused_when_built() -> None:
    from coordinator.secure import make_plan

    # Prepare: n = 12 gives k = 11; devices refuse t <= 5, so the coordinator must not plan it
    idx = np.arange(10, dtype=np.int64)
    # Execute / Assert
    with pytest.raises(ValueError, match="half the graph degree 11"):
        make_plan(SecureConfig(threshold=5), 1, 12, D, idx)
    assert make_plan(SecureConfig(threshold=6), 1, 12, D, idx).threshold == 6


@pytest.mark.parametrize("dp", [False, True])
def test_level_sums_outside_what_devices_can_send_abort_the_group(
    monkeypatch: pytest.MonkeyPatch, dp: bool
) -> None:
    from protocol.secagg import NoiseKind

    # Prepare: one of six devices sends uniform ring elements as its values (what a device
    # masking with a seed other than the one it shared, or a forged input, amounts to) and an
    # honest weight. Honest level sums lie in [-headroom, W (2^b - 1) + headroom].
    devs, parts, ups = _fleet(6)
    noise = NoiseKind.SKELLAM if dp else NoiseKind.NONE
    cfg = SecureConfig(coord_fraction=0.1, clip_norm=2.0, noise=noise, noise_multiplier=1.0)
    honest = sdk.secure.encode_for_plan
    rng = np.random.default_rng(5)

    def forged(u: Any, plan: SecurePlan, w: int, r: Any, noise_rng: Any = None, node: Any = None):  # type: ignore[no-untyped-def]
        vector, sent = honest(u, plan, w, r, noise_rng, node)
        if node == 0:
            vector[: plan.k] = rng.integers(0, 1 << plan.ring_bits, plan.k, dtype=np.uint64)
        return vector, sent

    monkeypatch.setattr(sdk.secure, "encode_for_plan", forged)
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    # Execute
    out, _ = run_secure_round(coord, parts, ups)
    # Assert: refused, model unchanged
    assert not out.committed and coord.version == 0
    assert any("level sum" in r for r in out.measurements["abort_reasons"])
