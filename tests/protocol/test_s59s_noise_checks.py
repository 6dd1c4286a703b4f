"""Checks of protocol/secagg/_noise.py that no test in tests/protocol reached (a mutation hunt,
helper s59s, removed each and those tests still passed): the refusals of a parameter out of
range by the samplers, `randbelow` (without it randbelow(0) never returns) and `CtrRandom.at`,
and `rational_variance` keeping a variance whose denominator is at most 10^6 exactly
(without that branch 1/3 became 333334/10^6)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from protocol.secagg._noise import CtrRandom, rational_variance, skellam


@pytest.mark.parametrize("sigma2", [0, -1, 0.0, Fraction(-1, 3)])
def test_a_variance_that_is_not_positive_is_refused(sigma2: Fraction | int | float) -> None:
    with pytest.raises(ValueError, match="^sigma2 must be positive$"):
        rational_variance(sigma2)


@pytest.mark.parametrize(
    "sigma2", [Fraction(1, 3), Fraction(7, 10**6), Fraction(5, 999_983), 2, 0.5]
)
def test_a_variance_with_a_small_denominator_is_kept_exactly(
    sigma2: Fraction | int | float,
) -> None:
    assert rational_variance(sigma2) == Fraction(sigma2)


def test_a_variance_with_a_large_denominator_is_rounded_up_to_a_millionth() -> None:
    assert rational_variance(Fraction(1, 3 * 10**6)) == Fraction(1, 10**6)


@pytest.mark.parametrize("mu", [0.0, -1.0])
def test_skellam_refuses_a_mean_that_is_not_positive(mu: float) -> None:
    with pytest.raises(ValueError, match="^mu must be positive$"):
        skellam(mu, 3, bytes(32))


@pytest.mark.parametrize("n", [0, -5])
def test_randbelow_refuses_an_empty_range(n: int) -> None:
    with pytest.raises(ValueError, match="^randbelow needs n >= 1$"):
        CtrRandom(bytes(32)).randbelow(n)
    assert CtrRandom(bytes(32)).randbelow(1) == 0


def test_a_generator_at_a_negative_position_is_refused() -> None:
    with pytest.raises(ValueError, match="^position must be >= 0, got -1$"):
        CtrRandom.at(bytes(32), -1)
    assert CtrRandom.at(bytes(32), 0).randbelow(1 << 30) == CtrRandom(bytes(32)).randbelow(1 << 30)
