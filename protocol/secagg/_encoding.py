"""The value encoding both sides agree on: rotation, b-bit affine quantization, and sum decoding.

Affine map (per coordinate, after clipping to [-C', C'] with C' = plan.coord_bound):
    x = (v + C') * (2^b - 1) / (2 C'),  q = floor(x) + Bernoulli(x - floor(x))  in [0, 2^b - 1]
so E[q] = x (unbiased), and the device's own reconstruction is v_hat = q * s - C' with
s = 2 C' / (2^b - 1). Device i sends w_i * q_i (+ integer noise) and w_i. From the ring sums
Q = sum_i w_i q_i (+ noise) and W = sum_i w_i the server gets
    sum_i w_i v_hat_i = s * Q - C' * W,   mean = (s * Q - C' * W) / W,
then undoes the rotation and scatters the mean onto S_r.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._plan import SecurePlan
from ._prg import prg_bytes

__all__ = [
    "rotation_blocks",
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


def quantize(
    v: npt.NDArray[np.floating], coord_bound: float, bits: int, rng: np.random.Generator
) -> npt.NDArray[np.uint64]:
    """Clip to [-C', C'] and stochastically round onto {0, ..., 2^b - 1} (unbiased). uint64[k]."""
    levels = (1 << bits) - 1
    x = (np.clip(np.asarray(v, dtype=np.float64), -coord_bound, coord_bound) + coord_bound) * (
        levels / (2.0 * coord_bound)
    )
    low = np.floor(x)
    q = low + (rng.random(x.shape[0]) < (x - low))
    out: npt.NDArray[np.uint64] = np.clip(q, 0, levels).astype(np.uint64)
    return out


def dequantize(
    q: npt.NDArray[np.integer], coord_bound: float, bits: int
) -> npt.NDArray[np.float64]:
    """The value a level stands for: q * 2C' / (2^b - 1) - C'. float64[k]."""
    levels = (1 << bits) - 1
    return np.asarray(q, dtype=np.float64) * (2.0 * coord_bound / levels) - coord_bound


def decode_ring_sum(
    total: npt.NDArray[np.uint64], plan: SecurePlan
) -> tuple[npt.NDArray[np.float64], int]:
    """From the unmasked ring sum (uint64[k+1]) to (weighted mean at S_r float64[k], total weight).

    Ring values in the top `noise_headroom` of Z_{2^m} are negative sums (noise pushed them
    below zero). The mean is in the original (unrotated) coordinates of S_r.
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
    mean = (scale * signed[: plan.k] - plan.coord_bound * weight) / weight
    if plan.rotate:
        mean = unrotate(mean, plan.rotation_seed)
    return mean, weight


def decode_sketch_sum(total: npt.NDArray[np.uint64], plan: SecurePlan) -> npt.NDArray[np.float64]:
    """The summed sketch levels, float64[plan.sketch_len] (no noise is added to the sketch)."""
    return total[plan.k : plan.k + plan.sketch_len].astype(np.float64)
