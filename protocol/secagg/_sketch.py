"""A row/column energy sketch: where a device's update mass is, in a few thousand numbers.

For a weight matrix (rows x cols; conv kernels are reshaped to out x in*kh*kw) the device sends
g_row[i] = (sum_j u_ij^2 / E)^(1/4) and g_col[j] = (sum_i u_ij^2 / E)^(1/4), E = ||u||^2 over
all segments, each in [0, 1] and stochastically rounded to `sketch_bits` bits. Columns are
pooled in groups of `pool` to save bytes. The entries are per-device non-negative numbers, so
their sum under SecAgg is meaningful; the coordinator takes S^4 of the summed entries S as the
cohort's row and column energies r_i^2 and c_j^2, estimates the energy at (i, j) as
r_i^2 c_j^2 / sum_i r_i^2 (exact when the magnitudes are rank one, as a single example's
gradient of a linear layer is) and takes the top of that as the next coordinate set.
1-D tensors (biases) are segments with cols = 1: one entry per coordinate.

Why the fourth root: a typical row of a 512-row layer holds about 1/1000 of the energy. Its
square root, 0.03, is a fraction of one level at 3 bits, so stochastic rounding leaves mostly
zeros and the cohort's sum is noise. The fourth root, 0.18, spreads the small entries over the
levels. Since the estimate is a product of a row and a column term, a power applied to both
keeps the order within a matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ._encoding import round_to_levels
from ._plan import SecurePlan

__all__ = ["sketch_segments_for", "device_sketch", "sketch_scores"]


def sketch_segments_for(
    shapes: Sequence[Sequence[int]], pool: int = 1
) -> tuple[tuple[int, int, int, int], ...]:
    """Segments (offset, rows, cols, pool) for tensors of these shapes laid out in order."""
    out = []
    offset = 0
    for shape in shapes:
        size = math.prod(shape)
        if size == 0:
            continue
        if len(shape) >= 2:
            rows, cols = int(shape[0]), size // int(shape[0])
            out.append((offset, rows, cols, min(pool, cols)))
        else:
            out.append((offset, size, 1, 1))
        offset += size
    return tuple(out)


def _pooled(c: npt.NDArray[np.float64], pool: int) -> npt.NDArray[np.float64]:
    groups = -(-c.size // pool)
    padded = np.zeros(groups * pool)
    padded[: c.size] = c
    out: npt.NDArray[np.float64] = padded.reshape(groups, pool).sum(axis=1)
    return out


def device_sketch(
    u: npt.NDArray[np.floating],
    plan: SecurePlan,
    rng: np.random.Generator,
    dither: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.uint64]:
    """The device's quantized sketch, uint64[plan.sketch_len], levels in [0, 2^sketch_bits - 1].

    Rounding is floor(x + U) with U from `rng` (stochastic rounding) or the public `dither`
    (float64[sketch_len], subtracted again by the coordinator: `decode_sketch_sum`).
    """
    levels = (1 << plan.sketch_bits) - 1
    parts = []
    for off, rows, cols, pool in plan.sketch_segments:
        e2 = np.square(np.asarray(u[off : off + rows * cols], dtype=np.float64)).reshape(rows, cols)
        parts.append(e2.sum(axis=1))
        parts.append(_pooled(e2.sum(axis=0), pool) if cols > 1 else np.zeros(1))
    raw = np.concatenate(parts) if parts else np.zeros(0)
    total = float(sum(p.sum() for p in parts[::2]))
    g = np.sqrt(np.sqrt(raw / total)) if total > 0 else np.zeros_like(raw)
    return round_to_levels(np.clip(g, 0.0, 1.0) * levels, levels, rng, dither)


def sketch_scores(sums: npt.NDArray[np.floating], plan: SecurePlan) -> npt.NDArray[np.float32]:
    """Per-coordinate energy estimates float32[d] from the summed sketch levels (zeros outside
    the segments)."""
    levels = (1 << plan.sketch_bits) - 1
    # Entries are fourth roots of energy fractions: s = (S / levels)^2 is on the square-root
    # scale of r and c, and r^2 = s^2 below is the energy.
    s = np.square(np.asarray(sums, dtype=np.float64) / levels)
    est = np.zeros(plan.model_size, dtype=np.float32)
    pos = 0
    for off, rows, cols, pool in plan.sketch_segments:
        r2 = np.square(s[pos : pos + rows])
        pos += rows
        groups = -(-cols // pool)
        c2 = np.square(s[pos : pos + groups])
        pos += groups
        norm = float(r2.sum())
        if cols == 1:
            est[off : off + rows] = r2.astype(np.float32)
        elif norm > 0:
            per_col = np.repeat(c2 / pool, pool)[:cols]
            est[off : off + rows * cols] = (np.outer(r2, per_col) / norm).ravel().astype(np.float32)
    return est
