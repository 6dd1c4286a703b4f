"""Tests of the secure-mode defaults: the (value bits, coordinates) trade and the quantizer range."""

from __future__ import annotations

import math

import numpy as np

from coordinator.secure import SecureConfig, make_plan
from protocol.secagg import (
    dequantize,
    device_sketch,
    quantize,
    rotate,
    sketch_scores,
    sketch_segments_for,
    unrotate,
)

# MNIST-CNN (mobile_sim.models.mnist_cnn), 1,663,370 parameters: the benchmark model.
CNN_SHAPES = [(32, 1, 5, 5), (32,), (64, 32, 5, 5), (64,), (512, 3136), (512,), (10, 512), (10,)]
CNN_D = sum(math.prod(s) for s in CNN_SHAPES)
# bench/results/secagg.json: the plain frame (top-k 1%, 4 bits, zstd) of real MNIST-CNN deltas is
# 20,117 B; the key stages (advertise, shares, unmask) of one device at n = 100 are about 5.9 kB.
PLAIN_FRAME_BYTES = 20_117
KEY_STAGE_BYTES_N100 = 5_900


def _masked_input_bytes(cfg: SecureConfig, n: int) -> tuple[int, int, int]:
    """(k, sketch entries, bytes of one device's packed masked input), MNIST-CNN plan, n nodes."""
    k = max(1, int(round(cfg.coord_fraction * CNN_D)))
    segments = sketch_segments_for(CNN_SHAPES, cfg.sketch_pool)
    plan = make_plan(cfg, 1, n, CNN_D, np.arange(k, dtype=np.int64), segments)
    return k, plan.sketch_len, math.ceil(plan.vector_len * plan.ring_bits / 8)


def test_default_upload_at_n100_fits_twice_the_plain_frame() -> None:
    # Prepare
    cfg = SecureConfig()
    # Execute
    _, _, masked = _masked_input_bytes(cfg, 100)
    # Assert
    assert CNN_D == 1_663_370
    assert masked + KEY_STAGE_BYTES_N100 <= 2 * PLAIN_FRAME_BYTES


def test_defaults_buy_coordinates_and_sketch_with_the_bits_six_bit_values_spent() -> None:
    # Prepare: the previous default, 6-bit values on 1% with the sketch pooled by 4.
    old = SecureConfig(coord_fraction=0.01, value_bits=6, coord_bound_sigmas=4.0, sketch_pool=4)
    new = SecureConfig()
    # Execute
    k_old, sketch_old, bytes_old = _masked_input_bytes(old, 100)
    k_new, sketch_new, bytes_new = _masked_input_bytes(new, 100)
    # Assert: at n = 100 the ring adds 7 bits to every value, so a value bit buys more as
    # coordinates and sketch entries: 25% more coordinates and a 2.4x finer sketch for under
    # 10% more masked-input bytes.
    assert k_new >= 1.2 * k_old
    assert sketch_new >= 2 * sketch_old
    assert bytes_new <= 1.1 * bytes_old


def test_default_quantizer_keeps_a_typical_update_within_its_range_and_unbiased() -> None:
    # Prepare: a device's values at S_r with the norm seen in MNIST-CNN rounds (0.5..1 x C),
    # heavy-tailed before rotation, as gradients are.
    cfg = SecureConfig()
    k = 4096
    rng = np.random.default_rng(7)
    v = rng.standard_t(3, k)
    v *= 0.8 * cfg.clip_norm / np.linalg.norm(v)
    seed = bytes(32)
    bound = min(cfg.clip_norm, cfg.coord_bound_sigmas * cfg.clip_norm / math.sqrt(k))
    # Execute
    r = rotate(v, seed)
    draws = [
        dequantize(quantize(r, bound, cfg.value_bits, rng), bound, cfg.value_bits)
        for _ in range(200)
    ]
    one = unrotate(draws[0], seed)
    mean = unrotate(np.mean(draws, axis=0), seed)
    # Assert: after rotation almost no coordinate reaches the range's edge; one draw's error
    # is a fraction of the signal (error feedback keeps it), and the error averages out.
    assert np.mean(np.abs(r) >= bound) < 0.01
    assert np.linalg.norm(one - v) / np.linalg.norm(v) < 0.5
    assert np.linalg.norm(mean - v) / np.linalg.norm(v) < 0.06


def test_default_three_bit_sketch_finds_the_rows_that_hold_more_energy() -> None:
    # Prepare: a 512 x 64 layer; 24 rows carry 4x the energy of the others on every device.
    # Each hot row holds under 1% of the energy, the regime of MNIST-CNN's fc1: square-root
    # entries round to a fraction of one 3-bit level, fourth roots spread over the levels.
    rows, cols, hot = 512, 64, 24
    rng = np.random.default_rng(3)
    plan = make_plan(
        SecureConfig(),
        1,
        10,
        rows * cols,
        np.arange(4, dtype=np.int64),
        sketch_segments_for([(rows, cols)], pool=1),
    )
    hot_rows = rng.choice(rows, hot, replace=False)
    total = np.zeros(plan.sketch_len)
    # Execute: ten devices' sketches, summed as SecAgg sums them
    for _ in range(10):
        u = rng.normal(0.0, 1.0, (rows, cols))
        u[hot_rows] *= 2.0
        total += device_sketch(u.ravel().astype(np.float32), plan, rng).astype(np.float64)
    row_energy = sketch_scores(total, plan).reshape(rows, cols).sum(axis=1)
    # Assert
    assert plan.sketch_bits == 3
    found = set(np.argsort(-row_energy)[:hot].tolist()) & set(hot_rows.tolist())
    assert len(found) >= 0.85 * hot
