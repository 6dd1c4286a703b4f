"""⌊f·n⌋ is computed exactly for the decimal f is written as (helper-180's review, item 4).

resolve_f and the trimmed mean floored the float product: 0.29·100 = 28.999999999999996 gave
28, not the docs' ⌊f·n⌋ = 29 (13 such pairs among two-decimal f < 0.5 and n <= 1,000).
"""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, build_aggregator
from coordinator.aggregators._robust import resolve_f


def test_every_two_decimal_fraction_floors_exactly_up_to_a_thousand_reports() -> None:
    wrong = [
        (k, n)
        for k in range(1, 100)
        for n in range(1, 1001)
        if resolve_f(k / 100, n) != k * n // 100
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("f", "n", "want"),
    [(0.29, 100, 29), (0.35, 180, 63), (0.1, 9, 0), (0.1, 10, 1), (0.123, 1000, 123), (3, 7, 3)],
)
def test_known_cases(f: float, n: int, want: int) -> None:
    assert resolve_f(f, n) == want


def _reports(n: int) -> list[ClientUpdate]:
    x = np.random.default_rng(n).normal(size=(n, 2)).astype(np.float32)
    return [ClientUpdate(f"d{i:03d}", SparseUpdate(np.arange(2), x[i], 2), 1.0) for i in range(n)]


@pytest.mark.parametrize(
    ("spec", "key"),
    [("trimmed_mean:0.29", "trimmed_each_side"), ("multikrum:f=0.29", "f"), ("nnm:f=0.29", "f")],
)
def test_the_rules_use_the_exact_floor(spec: str, key: str) -> None:
    # 0.29 of 100 reports is 29: the old float floor said 28.
    proc = build_aggregator(spec).create(2)
    out = proc.next(proc.initialize(), _reports(100))
    assert out.measurements[key] == 29
