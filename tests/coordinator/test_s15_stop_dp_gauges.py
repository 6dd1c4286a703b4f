"""A stop that wins against a plain DP round's aggregation discards the noised sum, so the dp
gauges must not count it: they read the last committed round's figures again (helper-100's
review of 9fe0e3d: they kept the discarded round, plume_dp_rounds 2 at version 1)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from .test_h79_stop import DEVICES, _frame, _open_round, _start, _task
from .test_h92_stop_while_aggregating import _blocked_close, _hold
from .test_service_support import task_config

DP = "dp:clip=1,z=1,population=3,sample=3+fedavg"


def _gauges(rt: object) -> tuple[float | None, float | None]:
    reg = rt.privacy_metrics.registry  # type: ignore[attr-defined]
    return reg.get_sample_value("plume_dp_rounds"), reg.get_sample_value("plume_dp_epsilon")


@pytest.mark.parametrize("committed_before", [1, 0])
def test_a_stop_that_discards_a_dp_round_leaves_the_gauges_at_the_last_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed_before: int
) -> None:
    # Prepare: `committed_before` committed DP rounds, then a round whose close is held
    cfg = task_config(rounds=5, clients_per_round=3, min_reports=1, aggregator=DP)
    coord = _start(tmp_path / "p.db")
    task_id = _task(coord, cfg)
    rt = coord.runtimes[task_id]
    for r in range(committed_before):
        round_id = _open_round(coord, task_id, DEVICES)
        for i, d in enumerate(DEVICES):
            _, to_close = coord.submit(round_id, d, f"k{r}{d}", _frame(cfg, i))
        asyncio.run(coord.close_round(to_close))
    released = _gauges(rt)
    round_id = _open_round(coord, task_id, DEVICES)
    for i, d in enumerate(DEVICES):
        _, to_close = coord.submit(round_id, d, f"j{d}", _frame(cfg, 10 + i))
    entered, release = threading.Event(), threading.Event()
    monkeypatch.setattr(rt.engine, "close_round", _hold(entered, release, rt.engine.close_round))

    # Execute: the stop answers while the round aggregates
    _, outcome, after = _blocked_close(coord, rt, entered, release)

    # Assert: nothing published, and the gauges say what was released before
    assert not outcome.committed and after.version == committed_before
    assert _gauges(rt) == released
    assert released[0] == float(committed_before)
