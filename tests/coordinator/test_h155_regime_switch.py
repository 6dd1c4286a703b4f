"""The support rule's regime switch (docs/robustness.md, the support rule's Limits).

t = floor(beta·n) attackers decide whether a coordinate that h = t + 1 to 2t honest reports sent
is supported. Silent, they leave it to the plain rule, where the n - h unsent zeros hold it
near 0. Sending it, they reach the 2t + 1 threshold, and with b of them below every honest
value and t - b above, the coordinate is the mean of the sorted honest values h_(t-b+1) ...
h_(h-b): any window of h - t consecutive honest values, the largest or smallest included
(with t + 1 honest senders, any single honest value). Within the honest senders' values, as
the guarantee says, but at the senders' scale.
"""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, TrimmedMean


def one_coordinate(honest: list[float], attackers: list[float], silent: int) -> list[ClientUpdate]:
    """Reports of d = 2: the honest senders and attackers send coordinate 0, `silent` honest
    reports send coordinate 1 only."""
    out = []
    for name, vals in (("h", honest), ("a", attackers)):
        for i, v in enumerate(vals):
            upd = SparseUpdate(np.array([0]), np.array([v], dtype=np.float32), 2)
            out.append(ClientUpdate(f"{name}{i}", upd, 1.0))
    for i in range(silent):
        out.append(
            ClientUpdate(f"z{i}", SparseUpdate(np.array([1]), np.array([0.1], np.float32), 2), 1.0)
        )
    return out


def coordinate_0(beta: float, support: bool, reports: list[ClientUpdate]) -> float:
    return float(TrimmedMean(beta, support=support).create(2).next((), reports).result[0])


def test_the_example_of_the_docs() -> None:
    # n = 10, beta = 0.2, t = 2: honest senders 1, 1, 5; 5 honest reports did not send it.
    quiet = one_coordinate([1.0, 1.0, 5.0], [], silent=7)  # the attackers send coordinate 1
    loud = one_coordinate([1.0, 1.0, 5.0], [3e38, 3e38], silent=5)
    assert round(coordinate_0(0.2, True, quiet), 4) == 0.1667  # unsupported: plain rule, 1/6
    assert coordinate_0(0.2, True, loud) == 5.0  # supported: the largest honest value
    assert round(coordinate_0(0.2, False, loud), 4) == 1.1667  # the plain rule: 7/6


@pytest.mark.parametrize(("n", "beta"), [(10, 0.2), (20, 0.2), (30, 0.1), (50, 0.2)])
def test_t_attackers_pick_any_window_of_h_minus_t_honest_values(n: int, beta: float) -> None:
    t = int(np.floor(beta * n))
    rng = np.random.default_rng(n)
    for h in range(t + 1, 2 * t + 1):
        honest = np.sort(rng.normal(size=h).astype(np.float32) * 3)
        silent = coordinate_0(beta, True, one_coordinate(honest.tolist(), [], silent=n - h))
        assert abs(silent) <= np.abs(honest).max() * h / (n - 2 * t)  # the zeros' regime
        for b in range(t + 1):
            attackers = [-3e38] * b + [3e38] * (t - b)
            reps = one_coordinate(honest.tolist(), attackers, silent=n - h - t)
            got = coordinate_0(beta, True, reps)
            want = honest[t - b : h - b].astype(np.float64).mean()
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7), (h, b)
            assert honest[0] <= got <= honest[-1]
