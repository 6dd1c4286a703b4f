"""protocol.secagg exports the plan's noise-variance bounds: docs/secure-aggregation.md names
them ("What a device refuses") as the limits a plan's per-device variance must respect, and
they were importable only from the private `_plan` module."""

from __future__ import annotations

import protocol.secagg as secagg
from protocol.secagg import _plan


def test_the_variance_bounds_are_exported() -> None:
    for name in ("MAX_DG_VARIANCE", "MAX_SKELLAM_VARIANCE", "MIN_NOISE_VARIANCE"):
        assert name in secagg.__all__
        assert getattr(secagg, name) == getattr(_plan, name)


def test_all_is_honest() -> None:
    assert len(set(secagg.__all__)) == len(secagg.__all__)
    for name in secagg.__all__:
        assert hasattr(secagg, name), name
