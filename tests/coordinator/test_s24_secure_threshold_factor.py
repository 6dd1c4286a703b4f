"""A `threshold` of 1 or below 0, and a `degree_factor` of 0 or below, were refused only when a
plan was built, in words that did not name the setting ("threshold 0 must exceed half the
graph degree 0"). Both are now refused by `SecureConfig` itself, naming the setting, for the
service (`parse_secure`, a 422 at task creation), programs and `plume sim --secure`. A
`threshold` of 0 keeps meaning the default, as the plan always read it (`threshold or
default`): a store may hold such a task, which must still start after an upgrade."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.secure import SecureConfig, make_plan
from coordinator.service.secure import parse_secure


@pytest.mark.parametrize("threshold", [1, -3])
def test_a_threshold_below_two_is_refused_by_name(threshold: int) -> None:
    with pytest.raises(ValueError, match=rf"threshold must be at least 2.*got {threshold}"):
        SecureConfig(threshold=threshold)
    with pytest.raises(ValueError, match="threshold must be at least 2"):
        parse_secure({"threshold": threshold}, seed=0, server_lr=1.0)


@pytest.mark.parametrize("factor", [0.0, -1.0, math.inf, math.nan])
def test_a_degree_factor_that_is_not_positive_and_finite_is_refused_by_name(factor: float) -> None:
    with pytest.raises(ValueError, match="degree_factor must be a positive finite number"):
        SecureConfig(degree_factor=factor)
    if math.isfinite(factor):  # JSON carries no inf or NaN (the service's number check)
        with pytest.raises(ValueError, match="degree_factor must be a positive finite number"):
            parse_secure({"degree_factor": factor}, seed=0, server_lr=1.0)


def test_valid_settings_still_plan_and_an_explicit_threshold_is_used() -> None:
    # A complete graph of 5 devices has degree 4; threshold 4 (above the default 3) is kept.
    idx = np.arange(100, dtype=np.int64)
    plan = make_plan(SecureConfig(threshold=4), 1, 5, 1000, idx)
    assert plan.threshold == 4
    # Left out, or 0 (what a stored task may hold), the default floor(k/2) + 1 applies.
    assert make_plan(SecureConfig(), 1, 5, 1000, idx).threshold == 3
    assert make_plan(SecureConfig(threshold=0), 1, 5, 1000, idx).threshold == 3
    assert parse_secure({"threshold": 0}, seed=0, server_lr=1.0).config.threshold == 0
    SecureConfig(degree_factor=0.5)
