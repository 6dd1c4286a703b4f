"""The `anomaly` stage's spec takes `max_drop` (helper-104's AnomalyFilter field)."""

from __future__ import annotations

import pytest

from coordinator.aggregators import build_aggregator
from coordinator.anomaly import AnomalyFilter


def _anomaly(spec: str) -> AnomalyFilter:
    agg = build_aggregator(spec)
    while not isinstance(agg, AnomalyFilter):
        agg = agg.inner  # type: ignore[attr-defined]
    return agg


def test_the_spec_sets_max_drop_and_defaults_it_to_a_half() -> None:
    assert _anomaly("anomaly:min_cos=0.2,max_drop=0.3+fedavg").max_drop == 0.3
    assert _anomaly("anomaly:min_cos=0.2+fedavg").max_drop == 0.5


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.1"])
def test_a_max_drop_outside_its_range_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="max_drop"):
        build_aggregator(f"anomaly:min_cos=0.2,max_drop={bad}+fedavg")
