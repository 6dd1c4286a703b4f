"""Tests of coordinator.secure: coordinate sets, plans, secure rounds end to end, groups, DP."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.secure import (
    DistributedDpAccountant,
    RandomPolicy,
    SecureConfig,
    SecureCoordinator,
    TopKMixPolicy,
    ddg_epsilon,
    make_plan,
    public_seed,
    split_groups,
)
from mobile_sim.secure import run_secure_round
from protocol.secagg import (
    MalformedMessage,
    NoiseKind,
    RingOverflow,
    SecurePlan,
    Stage,
    required_ring_bits,
)
from sdk.secure import SecureParticipant

D = 4000


def _fleet(n: int, seed: int = 0, scale: float = 0.01) -> tuple[list[str], dict, dict]:
    rng = np.random.default_rng(seed)
    devs = [f"dev-{i:03d}" for i in range(n)]
    parts = {d: SecureParticipant(D) for d in devs}
    ups = {d: (rng.normal(0, scale, D).astype(np.float32), int(rng.integers(1, 6))) for d in devs}
    return devs, parts, ups


def _sent(parts: dict, ups: dict, dev: str) -> np.ndarray:
    """What a device sent (float64[d]): u - new residual, with a zero residual before."""
    return ups[dev][0].astype(np.float64) - parts[dev].residual.astype(np.float64)


def test_topk_mix_policy_mixes_top_scores_and_public_random() -> None:
    score = np.zeros(1000, dtype=np.float32)
    score[[5, 50, 500, 900]] = [4.0, 3.0, 2.0, 1.0]
    pol = TopKMixPolicy(explore=0.5, seed=3)
    idx = pol.select(1, 1000, 6, score)
    assert idx.size == 6 and np.all(np.diff(idx) > 0)
    assert {5, 50, 500} <= set(idx.tolist())  # the top three by score
    assert np.array_equal(idx, pol.select(1, 1000, 6, score))  # public: anyone can recompute
    assert not np.array_equal(pol.select(2, 1000, 6, None), pol.select(1, 1000, 6, None))
    assert RandomPolicy(1).select(1, 1000, 1000, None).size == 1000
    assert public_seed(0, 1, b"a") != public_seed(0, 1, b"b")


def test_plan_roundtrip_and_refusals() -> None:
    cfg = SecureConfig(coord_fraction=0.05)
    plan = make_plan(cfg, 3, 20, D, np.arange(0, D, 20, dtype=np.int64))
    back = SecurePlan.from_bytes(plan.to_bytes(), D)
    assert back.to_bytes() == plan.to_bytes() and np.array_equal(back.indices, plan.indices)
    with pytest.raises(MalformedMessage):
        SecurePlan.from_bytes(plan.to_bytes()[:-1], D)
    with pytest.raises(MalformedMessage):
        SecurePlan.from_bytes(plan.to_bytes(), D - 1)  # bigger than this device's model
    # The flag byte carries rotate (bit 0) and dither (bit 1); unknown bits are refused.
    assert back.dither and back.rotate and plan.flags == 0b11
    flags_at = 4 + 8 + 4 * 3 + 2 + 4 + 8 + 8 + 8  # magic, round, n/k/t, m/b, w_max, d, C, C'
    raw = bytearray(plan.to_bytes())
    assert raw[flags_at] == 0b11
    raw[flags_at] = 0b111
    with pytest.raises(MalformedMessage, match="unknown bits"):
        SecurePlan.from_bytes(bytes(raw), D)
    raw[flags_at] = 0b01
    assert not SecurePlan.from_bytes(bytes(raw), D).dither
    with pytest.raises(ValueError, match="max_weight=1"):
        dataclasses.replace(plan, max_weight=2)


def test_two_devices_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        make_plan(SecureConfig(), 1, 2, D, np.arange(10, dtype=np.int64))


def test_ring_overflow_is_a_hard_error() -> None:
    cfg = SecureConfig(value_bits=16, max_weight=2**31)
    with pytest.raises(RingOverflow, match="does not fit"):
        make_plan(cfg, 1, 2**20, D, np.arange(10, dtype=np.int64))
    plan = make_plan(SecureConfig(), 1, 10, D, np.arange(10, dtype=np.int64))
    with pytest.raises(RingOverflow):
        dataclasses.replace(plan, ring_bits=plan.ring_bits - 1)


def test_secure_round_output_is_exact_weighted_mean_of_what_devices_sent() -> None:
    # Prepare
    devs, parts, ups = _fleet(12)
    coord = SecureCoordinator(
        np.zeros(D, np.float32), SecureConfig(coord_fraction=0.1, max_weight=8, clip_norm=2.0)
    )
    # Execute: one device drops before masking, one after
    out, stats = run_secure_round(
        coord, parts, ups, {devs[2]: Stage.SHARE_KEYS, devs[7]: Stage.UNMASK}
    )
    # Assert
    assert out.committed and devs[2] not in out.contributors and devs[7] in out.contributors
    w = {d: min(ups[d][1], 8) for d in out.contributors}
    want = sum(w[d] * _sent(parts, ups, d) for d in out.contributors) / sum(w.values())
    np.testing.assert_allclose(out.update, want, atol=1e-6)
    assert np.count_nonzero(out.update) <= coord.k
    np.testing.assert_array_equal(coord.params, out.update)
    assert coord.version == 1 and coord.score is not None
    # The dropped device never sent: its residual is untouched.
    assert not np.any(parts[devs[2]].residual)
    assert stats.bytes_up[devs[0]] > 0 and not stats.refused


def test_dithered_round_with_dropouts_is_exact_mean_of_what_contributors_sent() -> None:
    # Prepare: uniform weights, so the plan uses subtractive dither
    devs, parts, ups = _fleet(9, seed=4)
    coord = SecureCoordinator(
        np.zeros(D, np.float32), SecureConfig(coord_fraction=0.1, clip_norm=2.0)
    )
    # Execute: one device drops before masking, one after (its dither must still be removed)
    out, _ = run_secure_round(coord, parts, ups, {devs[1]: Stage.SHARE_KEYS, devs[5]: Stage.UNMASK})
    # Assert: the server subtracted exactly the contributors' dither
    assert out.committed and devs[1] not in out.contributors and devs[5] in out.contributors
    want = np.mean([_sent(parts, ups, d) for d in out.contributors], axis=0)
    np.testing.assert_allclose(out.update, want, atol=1e-6)


def test_dithered_decoding_needs_the_contributors() -> None:
    from protocol.secagg import decode_ring_sum, decode_sketch_sum

    plan = make_plan(SecureConfig(), 1, 5, D, np.arange(16, dtype=np.int64))
    total = np.zeros(plan.vector_len, dtype=np.uint64)
    total[-1] = 3
    with pytest.raises(ValueError, match="node ids"):
        decode_ring_sum(total, plan)
    with pytest.raises(ValueError, match="does not match"):
        decode_ring_sum(total, plan, [0, 1])
    with pytest.raises(ValueError, match="does not match"):
        decode_sketch_sum(total, plan, [0, 0, 1])
    mean, weight = decode_ring_sum(total, plan, [0, 1, 2])
    assert weight == 3 and mean.shape == (16,)


def test_dithered_sketch_sum_is_unbiased() -> None:
    from protocol.secagg import (
        decode_sketch_sum,
        device_sketch,
        dither_uniforms,
        sketch_segments_for,
    )

    # Prepare: 200 devices with the same update; each rounds its sketch with its own dither
    rows, cols, n = 6, 10, 200
    u = np.random.default_rng(5).normal(0, 1, rows * cols).astype(np.float32)
    segs = sketch_segments_for([(rows, cols)], pool=1)
    plan = make_plan(SecureConfig(), 1, n, u.size, np.arange(4, dtype=np.int64), segs)
    rng = np.random.default_rng(0)
    exact = device_sketch(u, dataclasses.replace(plan, sketch_bits=16), rng).astype(np.float64)
    exact *= ((1 << plan.sketch_bits) - 1) / ((1 << 16) - 1)  # the unrounded levels, nearly
    total = np.zeros(plan.vector_len, dtype=np.uint64)
    for node in range(n):
        dither = dither_uniforms(plan, node, plan.sketch_len, b"sketch")
        total[plan.k : plan.k + plan.sketch_len] += device_sketch(u, plan, rng, dither)
    total[-1] = n
    # Execute
    mean = decode_sketch_sum(total, plan, range(n)) / n
    # Assert: within the rounding noise of 200 uniform errors (sd 0.29 / sqrt(200) = 0.02)
    np.testing.assert_allclose(mean, exact, atol=0.1)


def test_grouped_mode_fedavg_equals_cohort_mean_and_median_runs() -> None:
    devs, parts, ups = _fleet(12, seed=1)
    cfg = SecureConfig(coord_fraction=0.1, group_size=4, group_aggregator="fedavg", clip_norm=2.0)
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    out, _ = run_secure_round(coord, parts, ups)
    assert out.measurements["groups"] == 3 and out.committed
    want = np.mean([_sent(parts, ups, d) for d in out.contributors], axis=0)
    np.testing.assert_allclose(out.update, want, atol=1e-6)

    devs, parts, ups = _fleet(12, seed=2)
    coord = SecureCoordinator(
        np.zeros(D, np.float32), dataclasses.replace(cfg, group_aggregator="median")
    )
    out, _ = run_secure_round(coord, parts, ups)
    assert out.committed and "aggregator" in out.measurements


def test_grouped_mode_one_group_aborts_others_commit() -> None:
    devs, parts, ups = _fleet(12, seed=3)
    cfg = SecureConfig(coord_fraction=0.1, group_size=4, clip_norm=2.0)
    groups = split_groups(devs, 4, public_seed(cfg.seed, 1, b"groups"))
    drops = dict.fromkeys(groups[0][:3], Stage.MASKED_INPUT)  # 1 of 4 left in group 0
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    out, _ = run_secure_round(coord, parts, ups, drops)
    assert out.committed and out.aborted_groups == 1
    assert set(out.contributors) == set(groups[1]) | set(groups[2])


def test_whole_cohort_abort_leaves_model_unchanged() -> None:
    devs, parts, ups = _fleet(6, seed=4)
    coord = SecureCoordinator(np.ones(D, np.float32), SecureConfig(coord_fraction=0.1))
    out, _ = run_secure_round(coord, parts, ups, dict.fromkeys(devs[:4], Stage.UNMASK))
    assert not out.committed and coord.version == 0
    np.testing.assert_array_equal(coord.params, np.ones(D, np.float32))


def test_device_refuses_model_inconsistency() -> None:
    devs, parts, ups = _fleet(5, seed=5)
    coord = SecureCoordinator(np.zeros(D, np.float32), SecureConfig(coord_fraction=0.1))
    task = coord.open_round(devs)
    sr = task.groups[0]
    other_model = np.full(D, 0.5, np.float32)  # the server gave this device another model
    from protocol.secagg import ModelMismatch

    with pytest.raises(ModelMismatch):
        parts[devs[0]].join(sr.plan_bytes, sr.digest, other_model, 0)
    tampered = dataclasses.replace(sr.plan, clip_norm=sr.plan.clip_norm * 2).to_bytes()
    with pytest.raises(ModelMismatch):
        parts[devs[0]].join(tampered, sr.digest, coord.params, 0)


def test_distributed_dp_noise_level_and_accounting() -> None:
    # Zero updates: the decoded mean is quantization noise plus the devices' summed Skellam noise.
    n = 10
    devs = [f"d{i}" for i in range(n)]
    parts = {d: SecureParticipant(D) for d in devs}
    ups = {d: (np.zeros(D, np.float32), 1) for d in devs}
    cfg = SecureConfig(
        coord_fraction=0.5, noise=NoiseKind.SKELLAM, noise_multiplier=1.0, expected_dropout=0.0
    )
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    out, _ = run_secure_round(coord, parts, ups)
    plan = make_plan(cfg, 1, n, D, np.arange(coord.k, dtype=np.int64))
    scale = 2 * plan.coord_bound / ((1 << plan.value_bits) - 1)
    want_var = scale**2 * n * plan.noise_variance / n**2
    got = out.update[out.update != 0].astype(np.float64)
    assert 0.8 < got.var() / want_var < 1.25
    assert 0 < out.measurements["dp"]["epsilon"] < np.inf and out.measurements["dp"]["rounds"] == 1


def test_discrete_gaussian_round_and_accountant() -> None:
    devs, parts, ups = _fleet(5, seed=6)
    cfg = SecureConfig(coord_fraction=0.01, noise=NoiseKind.DISCRETE_GAUSSIAN, noise_multiplier=2.0)
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    out, _ = run_secure_round(coord, parts, ups)
    eps1 = out.measurements["dp"]["epsilon"]
    out2, _ = run_secure_round(coord, parts, ups)
    assert out.committed and out2.committed and out2.measurements["dp"]["rounds"] == 2
    assert 0 < eps1 < out2.measurements["dp"]["epsilon"]
    # More noise, less epsilon; the DDG bound tends to the Gaussian one (Delta / sqrt(n) sigma).
    assert ddg_epsilon(100.0, 400.0, 10, 50) > ddg_epsilon(100.0, 900.0, 10, 50)
    assert ddg_epsilon(100.0, 1e4, 4, 10) == pytest.approx(100.0 / (2 * 100.0), rel=1e-6)
    acc = DistributedDpAccountant(1e-5)
    assert acc.epsilon() == 0.0
    acc.record_round(NoiseKind.NONE, 1.0, 0.0, 5, 10)
    assert acc.epsilon() == np.inf


def test_sketch_estimates_rank_one_energy() -> None:
    # Prepare: one 2-D tensor with rank-one magnitudes and a bias
    from protocol.secagg import device_sketch, sketch_scores, sketch_segments_for

    rows, cols = 8, 12
    a, b = np.linspace(0.1, 1.0, rows), np.linspace(1.0, 0.2, cols)
    u = np.concatenate([np.outer(a, b).ravel(), [0.5, -0.25]]).astype(np.float32)
    segs = sketch_segments_for([(rows, cols), (2,)], pool=1)
    cfg = SecureConfig(value_bits=16, sketch_bits=16)
    plan = make_plan(cfg, 1, 5, u.size, np.arange(4, dtype=np.int64), segs)
    # Execute: the same device sketch summed over 3 devices
    q = device_sketch(u, plan, np.random.default_rng(0)).astype(np.float64) * 3
    est = sketch_scores(q, plan)
    # Assert: proportional to u^2 everywhere, one constant for all segments
    ratio = est / np.square(u.astype(np.float64))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-3)
    assert plan.sketch_len == rows + cols + 2 + 1


def test_sketch_steers_next_coordinate_set_to_the_mass() -> None:
    from compression import ModelSpec

    spec = ModelSpec.from_shapes([("w", (40, 100)), ("b", (40,))])
    d = spec.size
    hot = np.zeros(d, np.float32)
    hot[7 * 100 : 8 * 100] = 1.0  # all mass on row 7 of w
    devs = [f"d{i}" for i in range(8)]
    parts = {x: SecureParticipant(d) for x in devs}
    ups = dict.fromkeys(devs, (hot, 1))
    cfg = SecureConfig(coord_fraction=0.025, explore=0.0, clip_norm=50.0, sketch_pool=4)
    coord = SecureCoordinator(np.zeros(d, np.float32), cfg, spec=spec)
    run_secure_round(coord, parts, ups)
    task = coord.open_round(devs)
    assert set(range(700, 800)) <= set(task.indices.tolist())  # k = 101: row 7 and one more
    assert task.groups[0].plan.sketch_len == 40 + 25 + 40 + 1


def test_upload_bytes_formula_is_exact_for_a_full_round() -> None:
    from protocol.secagg import device_upload_bytes

    # Prepare / Execute: a round where every device completes every stage
    devs, parts, ups = _fleet(8, seed=7)
    coord = SecureCoordinator(np.zeros(D, np.float32), SecureConfig(coord_fraction=0.05))
    out, stats = run_secure_round(coord, parts, ups)
    plan = coord.open_round(devs).groups[0].plan  # the same shape as the measured round's
    # Assert: the budget formula is what the wire carried, to the byte
    want = device_upload_bytes(plan.degree, plan.vector_len, plan.ring_bits)
    assert out.committed and {stats.bytes_up[d] for d in devs} == {want}


def test_upload_budget_sizes_the_coordinate_set_per_cohort() -> None:
    from coordinator.secure import budget_k
    from protocol.secagg import device_upload_bytes

    cfg = SecureConfig(upload_budget=4000)
    # The largest k that fits: one more coordinate would not.
    for n in (5, 12):
        k = budget_k(cfg, n, D)
        plan = make_plan(cfg, 1, n, D, np.arange(k, dtype=np.int64))
        nxt = make_plan(cfg, 1, n, D, np.arange(k + 1, dtype=np.int64))
        assert device_upload_bytes(plan.degree, plan.vector_len, plan.ring_bits) <= 4000
        assert device_upload_bytes(nxt.degree, nxt.vector_len, nxt.ring_bits) > 4000
    # A wider ring and more neighbours leave fewer coordinates to a bigger cohort.
    assert budget_k(cfg, 5, D) > budget_k(cfg, 12, D)
    # A round run under the budget stays within it on every device, dropouts or not.
    devs, parts, ups = _fleet(12, seed=8)
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    out, stats = run_secure_round(coord, parts, ups, {devs[3]: Stage.UNMASK})
    assert out.committed and out.measurements["k"] == budget_k(cfg, 12, D)
    assert max(stats.bytes_up.values()) <= 4000
    with pytest.raises(ValueError, match="below the"):
        budget_k(SecureConfig(upload_budget=500), 12, D)
    with pytest.raises(ValueError, match="upload_budget"):
        SecureConfig(upload_budget=0)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_plan_bytes_decode_to_the_same_bytes_or_a_typed_error(data: st.DataObject) -> None:
    from protocol.secagg import SecAggError

    # Prepare: a valid plan with a sketch, then one random edit: flip, truncate or append
    segs = ((0, 40, 50, 1), (2000, 10, 1, 1))
    plan = make_plan(SecureConfig(), 2, 12, D, np.arange(0, D, 7, dtype=np.int64), segs)
    raw = bytearray(plan.to_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if kind == "flip":
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=16))
    # Execute / Assert: either the canonical bytes of a valid plan, or a SecAggError subclass
    try:
        back = SecurePlan.from_bytes(bytes(raw), D)
    except SecAggError:
        return
    assert back.to_bytes() == bytes(raw) and back.model_size <= D


def test_a_plan_whose_zstd_header_declares_terabytes_is_refused_without_allocating() -> None:
    # Prepare: the plan's coordinate frame with its content-size field rewritten to 43 TB (the
    # input hypothesis found: zstandard allocated what the header declared, a MemoryError)
    from protocol.secagg import MalformedMessage

    segs = ((0, 40, 50, 1), (2000, 10, 1, 1))
    plan = make_plan(SecureConfig(), 2, 12, D, np.arange(0, D, 7, dtype=np.int64), segs)
    raw = bytearray(plan.to_bytes())
    raw[raw.find(b"\x28\xb5\x2f\xfd") + 4] ^= 144
    # Execute / Assert
    with pytest.raises(MalformedMessage, match="declares 43980471732208 bytes"):
        SecurePlan.from_bytes(bytes(raw), D)


def test_grouped_mode_reports_the_widest_groups_ring() -> None:
    # Prepare: 13 devices in groups of about 4, so one group has 5 nodes and a wider ring
    # (n * w_max * (2^b - 1) grows past a power of two); the measurement used to be group 0's.
    _, parts, ups = _fleet(13, seed=3)
    cfg = SecureConfig(coord_fraction=0.1, group_size=4, group_aggregator="fedavg", clip_norm=2.0)
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    widest = required_ring_bits(5, cfg.max_weight, cfg.value_bits)
    assert widest > required_ring_bits(4, cfg.max_weight, cfg.value_bits)

    # Execute
    out, _ = run_secure_round(coord, parts, ups)

    # Assert
    assert out.committed and out.measurements["groups"] == 3
    assert out.measurements["ring_bits"] == widest
