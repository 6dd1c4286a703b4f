"""`plume_updates_rejected_total` has a series per reason, at 0, from a task's start (as
docs/operations.md says every task's families do): before, the labelled counter had no sample
until the first rejection, so `increase(plume_updates_rejected_total[1h]) > 0` missed the first
rejection of each reason after every start (a reviewer's scrape after two rounds of
`anomaly+fedavg` with nothing rejected showed only its HELP and TYPE lines)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from coordinator.anomaly import AnomalyMetrics, RejectReason
from coordinator.service import ServiceConfig, Store
from coordinator.service.metrics import Metrics
from coordinator.service.rounds import Coordinator

from .test_restart_midround import Clock, _frame, _open_round
from .test_service_support import task_config

REASONS = (RejectReason.NORM, RejectReason.NORM_RATIO, RejectReason.COSINE)


def test_each_reason_starts_at_zero() -> None:
    # Execute
    metrics = AnomalyMetrics()
    # Assert
    for reason in REASONS:
        value = metrics.registry.get_sample_value(
            "plume_updates_rejected_total", {"reason": reason}
        )
        assert value == 0.0, reason


def test_a_served_task_has_the_zero_series_after_a_round_with_none_rejected(
    tmp_path: Path,
) -> None:
    # Prepare: a task with an anomaly stage, one round of two honest updates
    db = tmp_path / "plume.db"
    metrics = Metrics()
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), metrics, clock=Clock())
    coord.restore()
    cfg = task_config(
        rounds=3, clients_per_round=2, selection_timeout_s=30, aggregator="anomaly+fedavg"
    )
    task_id, r1 = _open_round(coord, cfg)
    coord.submit(r1, "a", "k1a", _frame(cfg, 0))
    _, rt = coord.submit(r1, "b", "k1b", _frame(cfg, 1))
    assert rt is not None
    # Execute
    asyncio.run(coord.close_round(rt))
    # Assert: screened 2, and each reason's series is there at 0
    labels = {"task": str(task_id)}
    assert metrics.registry.get_sample_value("plume_updates_screened_total", labels) == 2.0
    for reason in REASONS:
        value = metrics.registry.get_sample_value(
            "plume_updates_rejected_total", {**labels, "reason": reason}
        )
        assert value == 0.0, reason
    coord.store.close()
