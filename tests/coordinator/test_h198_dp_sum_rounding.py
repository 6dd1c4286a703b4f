"""Central DP noises the clipped reports' float64 sum, not a float32 mean times n.

`DPMean` rebuilt the sum as (FedAvg's float32 mean) x n: that mean's rounding, times n, let
replacing one device's report u by -u move the sum the noise covers by 2C (1 + 7.4e-5) at
n = 5,000, d = 16 (helper-193's F3; the error grows about n 6e-8 relative to the sum). Now
the noise is added to FedAvg's float64 sum and the noised mean is rounded to float32 once.

The released mean is float32, and its own rounding (after the noise: post-processing) is as
large as the old error; so these tests give the round a "noise" that cancels the others'
exact sum, leaving in the release only the summed reports' rounding and the changed device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, DPMean, FedAvg
from coordinator.aggregators._clip import clip_update

D, N, C = 16, 5000, 1.0


class _Cancel:
    """A stand-in for the round's generator: its Gaussian "noise" is a fixed array."""

    def __init__(self, noise: npt.NDArray[np.float64]) -> None:
        self.noise = noise

    def normal(self, loc: float, scale: float, size: Any = None) -> Any:
        assert size == D
        return self.noise.copy()


def _update(v: npt.NDArray[Any]) -> SparseUpdate:
    return SparseUpdate(np.arange(D, dtype=np.int64), np.asarray(v, dtype=np.float32), D)


def _cohort() -> tuple[list[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    """N - 1 reports near 0.9 C along one direction (under the clip), and one of norm 1.5 C."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal(D)
    base /= np.linalg.norm(base)
    others = [
        (0.9 * C * base + 1e-3 * rng.standard_normal(D)).astype(np.float32) for _ in range(N - 1)
    ]
    assert max(float(np.linalg.norm(o.astype(np.float64))) for o in others) < C
    return others, (1.5 * C * base).astype(np.float32)


def _released_sum(
    inner: FedAvg, others: list[npt.NDArray[np.float32]], own: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """The round's release x N, its noise being minus the others' exact sum."""
    exact = np.array([math.fsum(float(o[j]) for o in others) for j in range(D)])
    proc = DPMean(1.0, clip=C, inner=inner, denominator=float(N), seed=0).create(D)
    proc._rng = lambda rnd: _Cancel(-exact)  # type: ignore[method-assign,assignment,return-value]
    reports = [ClientUpdate(f"d{i}", _update(v), 1.0) for i, v in enumerate([*others, own])]
    out = proc.next(proc.initialize(), reports)
    return out.result.astype(np.float64) * N


@pytest.mark.parametrize("inner", [FedAvg(uniform=True), FedAvg(), FedAvg(max_weight=0.5)], ids=str)
def test_replacing_one_report_moves_the_noised_sum_by_at_most_2c(inner: FedAvg) -> None:
    # Prepare: one device's report u, or -u, among 4,999 others
    others, mine = _cohort()
    clipped = clip_update(_update(mine), C).values.astype(np.float64)
    # Execute
    with_u = _released_sum(inner, others, mine)
    with_minus_u = _released_sum(inner, others, -mine)
    # Assert: the sum the noise covers is the exact sum to ~1e-9 of C (it was 5e-5 off), so
    # the replacement moves it by 2C up to 1e-6 relative (7.4e-5 before)
    np.testing.assert_allclose(with_u, clipped, rtol=0, atol=1e-6 * C)
    np.testing.assert_allclose(with_minus_u, -clipped, rtol=0, atol=1e-6 * C)
    assert np.linalg.norm(with_u - with_minus_u) <= 2 * C * (1 + 1e-6)


def test_the_noised_mean_is_unchanged_for_an_ordinary_round() -> None:
    # The float64 sum / n is the mean FedAvg gives, so results move only by float32 rounding.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, D))
    reports = [ClientUpdate(f"d{i}", _update(v), 7.0) for i, v in enumerate(x)]
    clipped = np.stack([clip_update(_update(v), C).values.astype(np.float64) for v in x])
    proc = DPMean(0.5, clip=C, denominator=50.0, seed=9).create(D)
    out = proc.next(proc.initialize(), reports)
    noise = np.random.default_rng([9, 0]).normal(0.0, 0.5 * C, size=D)
    expected = (clipped.sum(0) + noise) / 50.0
    np.testing.assert_allclose(out.result, expected, rtol=1e-6, atol=1e-7)
    assert out.measurements["inner"] == {"clients": 40, "total_weight": 40.0}
