"""cosfilter:max_drop=0 is refused, as anomaly:max_drop=0 is (helper-180's review, item 3).

With max_drop = 0 every round, even one dropping nothing, has "at least 0 of the cohort"
dropped, so the reference was distrusted in every round and the filter kept every report:
the spec built and silently screened nothing.
"""

from __future__ import annotations

import pytest

from coordinator.aggregators import AggregatorSpecError, MomentumCosineFilter, build_aggregator
from coordinator.anomaly import AnomalyFilter


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_max_drop_outside_zero_one_is_refused_like_the_anomaly_screen(value: float) -> None:
    with pytest.raises(ValueError, match=r"max_drop must be in \(0, 1\]"):
        MomentumCosineFilter(max_drop=value)
    with pytest.raises(ValueError, match=r"max_drop must be in \(0, 1\]"):
        AnomalyFilter(max_drop=value)


def test_the_spec_names_the_stage() -> None:
    with pytest.raises(AggregatorSpecError, match=r"cosfilter.*max_drop must be in \(0, 1\]"):
        build_aggregator("cosfilter:max_drop=0+geomed")


@pytest.mark.parametrize("value", [1e-9, 0.5, 1.0])
def test_max_drop_in_zero_one_builds(value: float) -> None:
    assert MomentumCosineFilter(max_drop=value).max_drop == value
