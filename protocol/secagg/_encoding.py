"""The value encoding both sides agree on: rotation, b-bit affine quantization, and sum decoding.

Affine map (per coordinate, after clipping to [-C', C'] with C' = plan.coord_bound):
    x = (v + C') * (2^b - 1) / (2 C'),  q = floor(x + U)  in [0, 2^b - 1],  U ~ Uniform[0, 1).

Without dither U is the device's private randomness: q is x stochastically rounded, E[q] = x,
and the device's own reconstruction is x_hat = q. With `plan.dither` (subtractive dither) U
comes from a public PRG stream per node and round, so the coordinator can subtract it:
x_hat = q - U + 1/2. Its error x_hat - x = 1/2 - frac(x + U) is uniform on (-1/2, 1/2] and
independent of x: variance 1/12 of a level squared, half the 1/6 that stochastic rounding
averages (p(1 - p) over uniform p). Same levels, same ring, half the rounding noise.

v_hat = x_hat * s - C' with s = 2 C' / (2^b - 1). Device i sends w_i * q_i (+ integer noise)
and w_i. From the ring sums Q = sum_i w_i q_i (+ noise) and W = sum_i w_i the server gets
    sum_i w_i v_hat_i = s * (Q - D) - C' * W,   mean = that / W,
with D = sum_i (U_i - 1/2) over the contributors under dither (dither needs w_i = 1, so the
server knows each term) and D = 0 without. Then it undoes the rotation and scatters the mean
onto S_r.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ._plan import SecurePlan
from ._prg import prg_bytes

__all__ = [
    "rotation_blocks",
    "dither_uniforms",
    "dither_offset",
    "round_to_levels",
    "rotate",
    "unrotate",
    "quantize",
    "dequantize",
    "decode_ring_sum",
    "decode_sketch_sum",
]


def rotation_blocks(k: int) -> list[int]:
    """Power-of-two block lengths summing to k, largest first (the binary digits of k).

    The randomized Hadamard transform needs a power-of-two length; cutting S_r into blocks by
    the binary digits of k keeps it exactly orthogonal without padding (padding would cost
    upload bytes on every device).
    """
    return [1 << b for b in range(k.bit_length() - 1, -1, -1) if k >> b & 1]


def _fwht(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Orthonormal fast Walsh-Hadamard transform of a power-of-two-length vector (new array)."""
    n = x.shape[0]
    y = x.copy()
    h = 1
    while h < n:
        y = y.reshape(-1, 2, h)
        a, b = y[:, 0, :].copy(), y[:, 1, :]
        y[:, 0, :] += b
        y[:, 1, :] = a - b
        y = y.reshape(n)
        h *= 2
    out: npt.NDArray[np.float64] = y / np.sqrt(n)
    return out


def _signs(seed: bytes, k: int) -> npt.NDArray[np.float64]:
    bits = np.unpackbits(np.frombuffer(prg_bytes(seed, (k + 7) // 8, b"rotation-signs"), np.uint8))
    return 1.0 - 2.0 * bits[:k].astype(np.float64)


def rotate(v: npt.NDArray[np.floating], seed: bytes) -> npt.NDArray[np.float64]:
    """R v with R = blockdiag(H) D: random signs from `seed`, then blockwise Hadamard. float64[k]."""
    x = np.asarray(v, dtype=np.float64) * _signs(seed, v.shape[0])
    out = np.empty_like(x)
    start = 0
    for size in rotation_blocks(x.shape[0]):
        out[start : start + size] = _fwht(x[start : start + size])
        start += size
    return out


def unrotate(v: npt.NDArray[np.floating], seed: bytes) -> npt.NDArray[np.float64]:
    """R^T v (H is symmetric and its own inverse; D likewise). float64[k]."""
    x = np.asarray(v, dtype=np.float64)
    out = np.empty_like(x)
    start = 0
    for size in rotation_blocks(x.shape[0]):
        out[start : start + size] = _fwht(x[start : start + size])
        start += size
    return out * _signs(seed, x.shape[0])


def dither_uniforms(
    plan: SecurePlan, node: int, count: int, label: bytes
) -> npt.NDArray[np.float64]:
    """Node `node`'s public dither U in (0, 1), float64[count], for one use (`label`: b"values"
    or b"sketch") in this round: AES-CTR under the round's rotation seed, domain-separated.

    Public on purpose: the coordinator subtracts the contributors' dither from the sum. It is
    independent of the data, so knowing it tells the server nothing about any one update.
    """
    if not 0 <= node < plan.num_nodes:
        raise ValueError(f"node {node} outside 0..{plan.num_nodes - 1}")
    raw = prg_bytes(plan.rotation_seed, 4 * count, b"dither-" + label + node.to_bytes(4, "little"))
    words = np.frombuffer(raw, dtype="<u4").astype(np.float64)
    out: npt.NDArray[np.float64] = (words + 0.5) / 4294967296.0
    return out


def dither_offset(
    plan: SecurePlan, nodes: Sequence[int], count: int, label: bytes
) -> npt.NDArray[np.float64]:
    """D = sum over `nodes` of (U_node - 1/2), float64[count]: what dither adds to a level sum."""
    total = np.zeros(count, dtype=np.float64)
    for node in nodes:
        total += dither_uniforms(plan, int(node), count, label)
    total -= 0.5 * len(nodes)
    return total


def round_to_levels(
    x: npt.NDArray[np.float64],
    levels: int,
    rng: np.random.Generator,
    dither: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.uint64]:
    """q = floor(x + U) clipped to {0, ..., levels}, uint64[n], for x float64[n] in level units.

    U is drawn from `rng` (stochastic rounding, E[q] = x) unless the public `dither`
    (float64[n] in [0, 1)) is given; the coordinator then subtracts it again.
    """
    u = np.asarray(rng.random(x.shape[0]) if dither is None else dither, dtype=np.float64)
    if u.shape != x.shape:
        raise ValueError(f"dither of shape {u.shape} for {x.shape[0]} values")
    out: npt.NDArray[np.uint64] = np.clip(np.floor(x + u), 0, levels).astype(np.uint64)
    return out


def quantize(
    v: npt.NDArray[np.floating],
    coord_bound: float,
    bits: int,
    rng: np.random.Generator,
    dither: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.uint64]:
    """Clip to [-C', C'] and round onto {0, ..., 2^b - 1}: q = floor(x + U). uint64[k].

    U is drawn from `rng` (stochastic rounding, E[q] = x) unless `dither` (float64[k] in
    [0, 1), public) is given; then `dequantize` with the same dither is unbiased.
    """
    levels = (1 << bits) - 1
    x = (np.clip(np.asarray(v, dtype=np.float64), -coord_bound, coord_bound) + coord_bound) * (
        levels / (2.0 * coord_bound)
    )
    return round_to_levels(x, levels, rng, dither)


def dequantize(
    q: npt.NDArray[np.integer],
    coord_bound: float,
    bits: int,
    dither: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """The value a level stands for: x_hat * 2C' / (2^b - 1) - C', x_hat = q without dither and
    q - U + 1/2 with it. float64[k]."""
    levels = (1 << bits) - 1
    x_hat = np.asarray(q, dtype=np.float64)
    if dither is not None:
        x_hat = x_hat - np.asarray(dither, dtype=np.float64) + 0.5
    return x_hat * (2.0 * coord_bound / levels) - coord_bound


def _contributors(contributors: Sequence[int] | None, weight: int) -> Sequence[int]:
    if contributors is None:
        raise ValueError("a dithered plan needs the contributors' node ids to decode")
    if len(set(contributors)) != len(contributors) or weight != len(contributors):
        # Dither needs w_i = 1: the total weight is the number of contributors.
        raise ValueError(
            f"total weight {weight} does not match {len(contributors)} distinct contributors"
        )
    return contributors


def decode_ring_sum(
    total: npt.NDArray[np.uint64], plan: SecurePlan, contributors: Sequence[int] | None = None
) -> tuple[npt.NDArray[np.float64], int]:
    """From the unmasked ring sum (uint64[vector_len]) to (weighted mean at S_r float64[k],
    total weight).

    Ring values in the top `noise_headroom` of Z_{2^m} are negative sums (noise pushed them
    below zero). Under `plan.dither`, `contributors` (the node ids whose inputs are in the sum)
    is required and their dither is subtracted. The mean is in the original (unrotated)
    coordinates of S_r.
    """
    m = plan.ring_bits
    signed = total.astype(np.float64)
    if plan.noise_headroom:
        wrap = total >= np.uint64((1 << m) - plan.noise_headroom)
        signed[wrap] -= float(1 << m)
    weight = int(total[-1])
    if weight <= 0:
        return np.zeros(plan.k, dtype=np.float64), 0
    levels = (1 << plan.value_bits) - 1
    scale = 2.0 * plan.coord_bound / levels
    level_sum = signed[: plan.k]
    if plan.dither:
        nodes = _contributors(contributors, weight)
        level_sum = level_sum - dither_offset(plan, nodes, plan.k, b"values")
    mean = (scale * level_sum - plan.coord_bound * weight) / weight
    if plan.rotate:
        mean = unrotate(mean, plan.rotation_seed)
    return mean, weight


def decode_sketch_sum(
    total: npt.NDArray[np.uint64], plan: SecurePlan, contributors: Sequence[int] | None = None
) -> npt.NDArray[np.float64]:
    """The summed sketch levels, float64[plan.sketch_len] (no noise is added to the sketch);
    under `plan.dither` the contributors' sketch dither is subtracted (as for the values)."""
    sums = total[plan.k : plan.k + plan.sketch_len].astype(np.float64)
    if plan.dither:
        nodes = _contributors(contributors, int(total[-1]))
        sums = sums - dither_offset(plan, nodes, plan.sketch_len, b"sketch")
    return sums
