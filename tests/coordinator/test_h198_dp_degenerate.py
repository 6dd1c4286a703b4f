"""Degenerate central-DP configurations are refused when built (helper-193's F6).

`denom=inf` was accepted: every release was 0 and its noise_stddev 0. `clip=1e-320` (or any
clip below float32's smallest normal number) was accepted: every clipped float32 report
rounded to 0, so each release was noise around nothing. A task stored with such a value is
refused when the coordinator starts, with the reason, its rows kept as stored.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from compression import SparseUpdate, encode_snapshot
from coordinator.aggregators import (
    AdaptiveClip,
    AggregatorSpecError,
    ClientUpdate,
    DPMean,
    build_aggregator,
)
from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from protocol.messages import to_json
from protocol.names import TaskState

from .test_service_support import ADMIN, SPEC, initial_params, rewrite_stored_config, task_config

BASE = "dp:z=1,population=1000,sample=10"
AUTH = {"authorization": f"Bearer {ADMIN}"}
MIN_CLIP = float(np.finfo(np.float32).tiny)  # 1.1754944e-38


def test_the_floor_is_float32s_smallest_normal() -> None:
    from coordinator.aggregators._dp import MIN_CLIP as floor

    assert floor == MIN_CLIP == pytest.approx(1.1754944e-38, rel=1e-7)


@pytest.mark.parametrize("denom", ["inf", "nan", "-inf", "0"])
def test_a_denominator_that_is_not_finite_and_positive_is_refused(denom: str) -> None:
    with pytest.raises(AggregatorSpecError, match=r"denom") as refused:
        build_aggregator(f"{BASE},clip=1,denom={denom}+fedavg")
    assert "finite" in str(refused.value) or "NaN" in str(refused.value)  # the parser's
    with pytest.raises(ValueError, match="denominator"):
        DPMean(1.0, clip=1.0, denominator=float(denom))


@pytest.mark.parametrize("clip", ["1e-320", "1e-300", "1e-39", "1.17e-38"])
def test_a_clip_below_float32s_smallest_normal_is_refused(clip: str) -> None:
    with pytest.raises(
        AggregatorSpecError, match=r"clip \(clip=\) must be at least 1\.1754944e-38"
    ):
        build_aggregator(f"{BASE},clip={clip}+fedavg")
    # the adaptive clip's initial value too
    with pytest.raises(AggregatorSpecError, match="clip"):
        build_aggregator(f"{BASE},clip={clip},quantile=0.5+fedavg")
    with pytest.raises(ValueError, match="clip"):
        DPMean(1.0, clip=AdaptiveClip(initial=float(clip)), denominator=10.0)


def test_the_smallest_clip_and_an_ordinary_denominator_still_build_and_release() -> None:
    dp = DPMean(1.0, clip=MIN_CLIP, denominator=4.0, seed=0)
    proc = dp.create(1)
    reports = [
        ClientUpdate(f"d{i}", SparseUpdate(np.array([0]), np.ones(1, np.float32), 1), 1.0)
        for i in range(4)
    ]
    out = proc.next(proc.initialize(), reports)
    # four reports clipped to MIN_CLIP each (not 0): the sum is 4 MIN_CLIP, noise z MIN_CLIP
    assert out.measurements["noise_stddev"] == pytest.approx(MIN_CLIP / 4.0)
    assert math.isfinite(float(out.result[0])) and out.result[0] != 0
    build_aggregator(f"{BASE},clip=1.2e-38,denom=10+fedavg")


def test_an_adaptive_clip_under_dp_stays_at_or_above_the_floor() -> None:
    # Prepare: every report unclipped (zero updates), so each step shrinks the clip
    dp = DPMean(
        1.0,
        clip=AdaptiveClip(initial=MIN_CLIP, learning_rate=1.0, count_stddev=2.0),
        denominator=10.0,
        seed=1,
    )
    proc = dp.create(2)
    zero = [
        ClientUpdate(f"d{i}", SparseUpdate(np.array([0]), np.zeros(1, np.float32), 2), 1.0)
        for i in range(10)
    ]
    state = proc.initialize()
    # Execute
    clips = []
    for _ in range(5):
        state = proc.next(state, zero).state
        clips.append(state[1])
    # Assert: clamped at the floor (it went below it, towards float64's smallest normal)
    assert min(clips) >= MIN_CLIP


def test_create_task_with_denom_inf_answers_422(tmp_path: Path) -> None:
    body = to_json(task_config(aggregator=f"{BASE},clip=1,denom=inf+fedavg", clients_per_round=10))
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/v1/admin/tasks", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "validation" and "denom=" in r.json()["detail"]


def test_a_task_stored_with_denom_inf_is_refused_at_start(tmp_path: Path) -> None:
    # Prepare: a running dp task whose stored spec is rewritten to denom=inf, as a store
    # written before the check holds it (creating it now is a 422)
    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    ok = f"{BASE},clip=1,denom=10,delta=1e-5+fedavg"
    task_id = coord.create_task(task_config(aggregator=ok, clients_per_round=10))
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    coord.store.close()
    stored = rewrite_stored_config(db, task_id, aggregator=ok.replace("denom=10", "denom=inf"))
    # Execute
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    # Assert: refused with the reason, not running, its row as stored
    assert task_id not in coord.runtimes
    assert "denom=" in coord.refused[task_id].reason
    assert coord.task_status(task_id).state == TaskState.REFUSED
    assert coord.store.task_raw(task_id)[0] == stored  # type: ignore[index]
    coord.store.close()
