"""nnm refuses a fraction f above one half; cclip's tau=auto is matched case-insensitively
(helper-180's review, item 5).

Allouah et al. need f < n/2; nnm:f=0.6 built and broke it in most rounds (floor(0.6·n) >= n/2
from n = 4 on). f = 0.5 still builds: floor(n/2) < n/2 whenever n is odd (test_h95_gaps.py),
and rounds where it fails say so (`guarantee_holds`). cclip:tau=AUTO failed with "parameter
'tau' needs a number", while stage names are case-insensitive.
"""

from __future__ import annotations

import pytest

from coordinator.aggregators import (
    AggregatorSpecError,
    CenteredClipping,
    NearestNeighborMixing,
    build_aggregator,
)


@pytest.mark.parametrize("f", [0.51, 0.6, 0.99])
def test_nnm_refuses_a_fraction_above_one_half(f: float) -> None:
    with pytest.raises(ValueError, match="NNM needs f < n/2"):
        NearestNeighborMixing(f)
    with pytest.raises(AggregatorSpecError, match=r"nnm: NNM needs f < n/2.*got f="):
        build_aggregator(f"nnm:f={f}+geomed")


@pytest.mark.parametrize("f", [0.5, 0.2, 1, 7])
def test_nnm_builds_with_at_most_one_half_or_a_count(f: float) -> None:
    assert NearestNeighborMixing(f).f == f


@pytest.mark.parametrize("spec", ["cclip:tau=AUTO", "cclip:Auto", "CCLIP:tau=auto", "cclip:auto"])
def test_cclip_auto_in_any_case(spec: str) -> None:
    factory = build_aggregator(spec)
    assert isinstance(factory, CenteredClipping) and factory.tau is None


def test_cclip_says_what_it_takes() -> None:
    with pytest.raises(AggregatorSpecError, match="parameter 'tau' needs a number or auto"):
        build_aggregator("cclip:tau=often")
    assert build_aggregator("cclip:tau=2.5").tau == 2.5  # type: ignore[attr-defined]
