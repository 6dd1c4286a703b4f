"""The privacy accounting's classes called from Python with a huge int name it short (1e+400),
as the aggregators' checks do since d91ac5f (`aggregators._base.shown`): `PoissonSampling`,
`FixedSizeSampling` and `PrivacyAccountant`'s checks printed every digit of 10**400 in their
ValueError (a spec reaches them pre-checked, a Python caller did not), and a noise multiplier
of 10**400 raised OverflowError from math.isfinite instead of the refusal."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from coordinator.privacy import (
    FixedSizeSampling,
    PoissonSampling,
    PrivacyAccountant,
    composed_rdp_epsilon,
    rdp_curve,
)

LONG = re.compile(r"[0-9]{16,}")
HUGE = 10**400


def _accountant() -> PrivacyAccountant:
    return PrivacyAccountant(1.0, PoissonSampling(0.01), "rdp")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: PoissonSampling(HUGE), "sampling probability must be in (0, 1], got 1e+400"),
        (lambda: PoissonSampling(-HUGE), "sampling probability must be in (0, 1], got -1e+400"),
        (
            lambda: FixedSizeSampling(100, HUGE),
            "need 1 <= sample_size <= population, got 1e+400/100",
        ),
        (
            lambda: FixedSizeSampling(-HUGE, -HUGE + 1),
            "need 1 <= sample_size <= population, got -1e+400/-1e+400",
        ),
        (
            lambda: PrivacyAccountant(HUGE, PoissonSampling(0.01)),
            "noise multiplier must be finite and > 0, got 1e+400",
        ),
        (
            lambda: PrivacyAccountant(-HUGE, PoissonSampling(0.01)),
            "noise multiplier must be finite and > 0, got -1e+400",
        ),
        (lambda: _accountant().dp_event(-HUGE), "rounds must be >= 0, got -1e+400"),
        (lambda: _accountant().epsilon(1, HUGE), "delta must be in (0, 1), got 1e+400"),
        (lambda: rdp_curve(_accountant(), -HUGE), "rounds must be >= 0, got -1e+400"),
        (lambda: composed_rdp_epsilon([], -HUGE), "delta must be in (0, 1), got -1e+400"),
    ],
)
def test_a_huge_int_is_named_short(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value) == message
    assert not LONG.search(str(caught.value))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: PoissonSampling(1.5), "sampling probability must be in (0, 1], got 1.5"),
        (lambda: PoissonSampling(0), "sampling probability must be in (0, 1], got 0"),
        (lambda: FixedSizeSampling(10, 11), "need 1 <= sample_size <= population, got 11/10"),
        (
            lambda: PrivacyAccountant(float("inf"), PoissonSampling(0.01)),
            "noise multiplier must be finite and > 0, got inf",
        ),
        (lambda: _accountant().dp_event(-1), "rounds must be >= 0, got -1"),
        (lambda: _accountant().epsilon(1, 1.0), "delta must be in (0, 1), got 1.0"),
    ],
)
def test_small_numbers_are_named_as_before(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value) == message


def test_valid_values_are_taken() -> None:
    assert PoissonSampling(1).probability == 1
    assert FixedSizeSampling(HUGE, 5).sample_size == 5
    assert _accountant().epsilon(0, 1e-5) == 0.0
