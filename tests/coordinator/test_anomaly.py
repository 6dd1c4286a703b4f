"""Anomaly screening: norm and cosine signals, metrics in a registry, rejection, delegation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from compression import SparseUpdate
from coordinator.aggregators import AggregateOutput, ClientUpdate, FedAvg, NonFiniteReportError
from coordinator.anomaly import AnomalyFilter, AnomalyMetrics, cosine_to, update_norms


class _Counting:
    """Fake inner: the uniform mean, counting calls, with a fixed measurement."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def create(self, size: int) -> _Counting:
        self.size = size
        return self

    def initialize(self) -> Any:
        return 0

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput:
        self.calls.append([cu.device_id for cu in updates])
        out = FedAvg(uniform=True).create(self.size).next((), updates)
        return AggregateOutput(state + 1, out.result, {"fake": 42})


def ups(rows: list[list[float]]) -> list[ClientUpdate]:
    return [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.array(r, np.float32)), 1.0)
        for i, r in enumerate(rows)
    ]


def test_norms_and_cosines() -> None:
    u = ups([[3, 4], [0, 0], [-1, 0]])
    np.testing.assert_allclose(update_norms(u), [5, 0, 1])
    np.testing.assert_allclose(cosine_to(u, np.array([1.0, 0.0])), [0.6, 0.0, -1.0])


def test_measure_only_delegates_once_and_exports_metrics() -> None:
    # Prepare
    metrics = AnomalyMetrics()
    inner = _Counting()
    proc = AnomalyFilter(inner=inner, metrics=metrics).create(2)
    # Execute
    out = proc.next(proc.initialize(), ups([[1, 0], [0, 1], [1, 1]]))
    # Assert
    assert len(inner.calls) == 1 and out.state == 1
    assert out.measurements["inner"] == {"fake": 42}
    assert out.measurements["rejected"] == {}
    assert set(out.measurements["norms"]) == {"d0", "d1", "d2"}
    text = metrics.exposition().decode()
    assert "plume_updates_screened_total 3.0" in text
    assert "plume_update_norm_count 3.0" in text
    assert "plume_update_cosine_to_aggregate_bucket" in text


def test_norm_ratio_and_cosine_rejection() -> None:
    # Prepare: d3 is huge, d4 points the other way
    rows = [[1.0, 0.1], [1.0, -0.1], [1.1, 0.0], [100.0, 0.0], [-1.0, 0.0]]
    metrics = AnomalyMetrics(CollectorRegistry())
    inner = _Counting()
    proc = AnomalyFilter(inner, max_norm_ratio=3.0, min_cosine=0.0, metrics=metrics).create(2)
    # Execute
    out = proc.next(proc.initialize(), ups(rows))
    # Assert
    assert out.measurements["rejected"] == {"d3": "norm_ratio", "d4": "cosine"}
    assert inner.calls[-1] == ["d0", "d1", "d2"]
    assert out.state == 1  # the inner state advanced once, although it ran twice
    np.testing.assert_allclose(out.result, [1.0333333, 0.0], rtol=1e-6)
    text = metrics.exposition().decode()
    assert 'plume_updates_rejected_total{reason="norm_ratio"} 1.0' in text
    assert 'plume_updates_rejected_total{reason="cosine"} 1.0' in text


def test_absolute_norm_rejection_and_bad_config() -> None:
    proc = AnomalyFilter(FedAvg(), max_norm=2.0).create(2)
    out = proc.next(proc.initialize(), ups([[1, 0], [3, 0]]))
    assert out.measurements["rejected"] == {"d1": "norm"}
    np.testing.assert_allclose(out.result, [1, 0])
    with pytest.raises(ValueError):
        AnomalyFilter(max_norm_ratio=0.5)
    with pytest.raises(ValueError):
        AnomalyFilter(min_cosine=2.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_report_is_refused_before_metrics_or_the_inner_move(bad: float) -> None:
    # Prepare
    metrics = AnomalyMetrics()
    inner = _Counting()
    proc = AnomalyFilter(inner=inner, max_norm_ratio=2.0, metrics=metrics).create(2)
    before = metrics.exposition()
    reports = ups([[1, 0], [0, 1]])
    reports.append(ClientUpdate("bad", SparseUpdate.from_dense(np.array([bad, 1], np.float32)), 1))

    # Execute / Assert
    with pytest.raises(NonFiniteReportError, match="bad"):
        proc.next(proc.initialize(), reports)
    assert inner.calls == []
    assert metrics.exposition() == before
