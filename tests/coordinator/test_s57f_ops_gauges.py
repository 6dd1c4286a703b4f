"""Two rows of docs/operations.md's metric table that no test read (stop 57, audit F), in
process: `plume_tasks_unloaded` while a task is unloaded and after it loads again, and the
anomaly stage's `plume_round_max_update_norm` / `plume_round_min_update_cosine` after a
screened round."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from compression import UpdateCodec
from coordinator.service import ServiceConfig, Store
from coordinator.service.metrics import Metrics
from coordinator.service.rounds import RELOAD_RETRY_S, Coordinator

from .test_h69_store_recovery import _after_commit, _commit, _flaky, _read
from .test_restart_midround import Clock, _frame, _open_round
from .test_service_support import SPEC, task_config

DOC = " ".join((Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text().split())


def _coordinator(db: Path, clock: Clock) -> tuple[Coordinator, Metrics]:
    metrics = Metrics()
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), metrics, clock=clock)
    coord.restore()
    return coord, metrics


def test_tasks_unloaded_counts_a_task_while_it_is_unloaded(tmp_path: Path) -> None:
    # "`plume_tasks_unloaded` | | running tasks stopped because the database failed while they
    # were rebuilt from it, each tried again every 5 s ...; alert if it stays > 0"; "/healthz
    # ... a task unloaded after a store error ... is in neither: `plume_tasks_unloaded` counts
    # it"
    assert "`plume_tasks_unloaded` counts it" in DOC
    # Prepare: an upload's COMMIT fails, and so does the first read of the rebuild after it
    clock = Clock()
    coord, metrics = _coordinator(tmp_path / "plume.db", clock)
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    task_id, round_id = _open_round(coord, cfg)
    flaky = _flaky(coord)
    flaky.fail(_commit, 1)
    flaky.fail(_after_commit(flaky, _read), 1)
    # Execute
    with pytest.raises(sqlite3.OperationalError):
        coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    unloaded = metrics.registry.get_sample_value("plume_tasks_unloaded")
    refused = metrics.registry.get_sample_value("plume_tasks_refused")
    clock.now += RELOAD_RETRY_S
    coord.tick()
    # Assert: 1 while unloaded (not refused), 0 once loaded again
    assert task_id in coord.runtimes and not coord.unloaded
    assert (unloaded, refused) == (1.0, 0.0)
    assert metrics.registry.get_sample_value("plume_tasks_unloaded") == 0.0


def test_the_last_screened_rounds_extremes(tmp_path: Path) -> None:
    # "`plume_round_max_update_norm`, `plume_round_min_update_cosine` | `task` | the last
    # screened round's extremes"; "`plume_update_norm` | histogram: L2 norm of each decoded
    # update"; "`plume_updates_screened_total` | updates the anomaly stage measured"
    clock = Clock()
    coord, metrics = _coordinator(tmp_path / "plume.db", clock)
    cfg = task_config(
        rounds=3, clients_per_round=2, selection_timeout_s=30, aggregator="anomaly+fedavg"
    )
    task_id, round_id = _open_round(coord, cfg)
    frames = [_frame(cfg, 0), _frame(cfg, 1)]
    coord.submit(round_id, "a", "k-a", frames[0])
    _, rt = coord.submit(round_id, "b", "k-b", frames[1])
    assert rt is not None
    asyncio.run(coord.close_round(rt))

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"task": str(task_id)})  # type: ignore[no-any-return]

    codec = UpdateCodec(SPEC, cfg.codec.to_config())
    norms = [math.sqrt(codec.decode(f).squared_norm()) for f in frames]
    assert sample("plume_round_max_update_norm") == pytest.approx(max(norms), rel=1e-9)
    assert sample("plume_update_norm_count") == 2.0
    assert sample("plume_update_norm_sum") == pytest.approx(sum(norms), rel=1e-9)
    assert sample("plume_updates_screened_total") == 2.0
    dense = []
    for f in frames:
        u = codec.decode(f)
        row = np.zeros(SPEC.size, np.float64)
        row[u.indices] = u.values
        dense.append(row)
    aggregate = (10.0 * dense[0] + 20.0 * dense[1]) / 30.0  # fedavg by the frames' weights
    cosines = [
        float(r @ aggregate) / (np.linalg.norm(r) * np.linalg.norm(aggregate)) for r in dense
    ]
    assert sample("plume_round_min_update_cosine") == pytest.approx(min(cosines), rel=1e-6)
    assert sample("plume_update_cosine_to_aggregate_count") == 2.0
