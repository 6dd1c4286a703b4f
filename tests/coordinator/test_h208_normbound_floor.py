"""normbound's clip has the floor `dp`'s has: float32's smallest normal number (MIN_CLIP).

Before, `normbound:1e-45` (any C > 0) built, and so did `normbound:q=0.5,init=1e-45`, while
`dp` refused a clip below MIN_CLIP (36d7df5). The clipped reports are float32: clipped to such
a C they round to exactly 0, so the task's aggregate was 0 every round and its model never
moved, with no error. The adaptive clip's step floored at float64's smallest normal
(2.2e-308): after a run of zero-norm reports (every report unclipped, so C shrinks each round)
C sank there, and once real reports came back every clipped report was exactly 0 for hundreds
of rounds (about 240 at lr=5) while C climbed back through float32's subnormal range.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from compression import SparseUpdate, encode_snapshot
from coordinator.aggregators import (
    AdaptiveClip,
    AggregatorSpecError,
    ClientUpdate,
    Clip,
    build_aggregator,
    clip_update,
)
from coordinator.aggregators._clip import MIN_CLIP
from coordinator.aggregators._dp import MIN_CLIP as DP_MIN_CLIP
from coordinator.service import ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from protocol.names import TaskState

from .test_service_support import SPEC, initial_params, task_config

D = 8


def _reports(scale: float, seed: int, n: int = 5) -> list[ClientUpdate]:
    rng = np.random.default_rng(seed)
    return [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense((rng.normal(size=D) * scale).astype(np.float32)), 1.0)
        for i in range(n)
    ]  # fmt: skip


def test_one_constant_for_both_stages() -> None:
    assert MIN_CLIP == DP_MIN_CLIP
    assert MIN_CLIP == float(np.finfo(np.float32).tiny)


def test_below_the_floor_a_clipped_report_is_zero() -> None:
    # Why the floor: what a normbound below it did to every report (clip_update is unchanged).
    (report,) = _reports(3.0, seed=0, n=1)
    assert not np.any(clip_update(report.update, 1e-45).values)
    assert np.count_nonzero(clip_update(report.update, MIN_CLIP).values) == D


@pytest.mark.parametrize(
    ("spec", "what"),
    [
        ("normbound:1e-45+fedavg", "clip norm"),
        ("normbound:1e-300+fedavg", "clip norm"),
        ("normbound:1.17e-38+median", "clip norm"),
        ("normbound:q=0.5,init=1e-45+fedavg", r"initial clip \(init=\)"),
        ("normbound:q=0.5,init=1e-39+fedavg", r"initial clip \(init=\)"),
    ],
)
def test_a_clip_below_float32s_smallest_normal_is_refused(spec: str, what: str) -> None:
    # Before: built, and (for 1e-45 and 1e-300) every round's aggregate was exactly 0.
    with pytest.raises(AggregatorSpecError, match=rf"{what} must be at least 1\.1754944e-38"):
        build_aggregator(spec)
    with pytest.raises(ValueError, match="at least"):
        Clip(1e-45)
    with pytest.raises(ValueError, match="at least"):
        Clip(AdaptiveClip(initial=1e-45))


@pytest.mark.parametrize("spec", [f"normbound:{MIN_CLIP!r}", f"normbound:q=0.5,init={MIN_CLIP!r}"])
def test_the_floor_itself_builds_and_its_aggregate_is_not_zero(spec: str) -> None:
    proc = build_aggregator(spec + "+fedavg").create(D)
    out = proc.next(proc.initialize(), _reports(3.0, seed=1))
    assert out.measurements["clip"] == MIN_CLIP
    assert np.count_nonzero(out.result) == D and np.isfinite(out.result).all()


def test_an_adaptive_clip_sunk_by_zero_reports_recovers_from_the_floor() -> None:
    # 300 rounds of zero reports (all unclipped: C *= exp(-2.5) a round) take C from 0.1 to
    # its floor; then reports of norm ~3 come back (all clipped: C *= exp(2.5) a round).
    # Before: the floor was 2.2e-308, every clipped report was exactly 0 for the first ~240
    # rounds after, and C needed ~280 rounds to reach 1e-3. Now: from MIN_CLIP, no round's
    # aggregate is 0 and C is past 1e-3 within 33 rounds (40 allowed).
    proc = build_aggregator("normbound:q=0.5,lr=5+fedavg").create(D)
    state = proc.initialize()
    zero = [ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.zeros(D, np.float32)), 1.0) for i in range(5)]  # fmt: skip
    for _ in range(300):
        state = proc.next(state, zero).state
    assert state[1] == MIN_CLIP  # at the floor, not below it
    clips = []
    for r in range(40):
        out = proc.next(state, _reports(3.0, seed=r))
        clips.append(out.measurements["clip"])
        assert np.count_nonzero(out.result) > 0, f"round {r} after the zero reports: aggregate 0"
        state = out.state
    assert min(clips) >= MIN_CLIP
    assert clips[-1] > 1e-3


def test_a_stored_clip_below_the_floor_steps_back_to_it() -> None:
    # A task stored before this change may hold C = 2.2e-308 in its aggregator state: that
    # round still uses it (its reports clip to 0), and the next clip is at least the floor.
    proc = build_aggregator("normbound:q=0.5,lr=0.2+fedavg").create(D)
    _, _, inner = proc.initialize()
    out = proc.next((7, sys.float_info.min, inner), _reports(3.0, seed=2))
    assert out.measurements["clip"] == sys.float_info.min
    assert out.state[1] >= MIN_CLIP


def test_the_step_is_floored_at_min_clip() -> None:
    a = AdaptiveClip(0.1, 0.5, 1e3)
    assert a.step(MIN_CLIP, 1.0) == MIN_CLIP
    assert a.step(1e-30, 1.0) == MIN_CLIP


def test_a_task_stored_with_a_clip_below_the_floor_is_refused_at_start(tmp_path: Path) -> None:
    # Prepare: a running normbound task whose stored spec is rewritten to normbound:1e-45, as
    # a store written before the check holds it (creating it now is a 422)
    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    task_id = coord.create_task(task_config(aggregator="normbound:1+fedavg"))
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    coord.store.close()
    con = sqlite3.connect(db)
    (raw,) = con.execute("SELECT config_json FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    stored = json.dumps(json.loads(raw) | {"aggregator": "normbound:1e-45+fedavg"})
    con.execute("UPDATE tasks SET config_json=? WHERE task_id=?", (stored, task_id))
    con.commit()
    con.close()
    # Execute
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    # Assert: refused with the reason, not running, its row as stored
    assert task_id not in coord.runtimes
    assert "at least 1.1754944e-38" in coord.refused[task_id].reason
    assert coord.task_status(task_id).state == TaskState.REFUSED
    assert coord.store.task_raw(task_id)[0] == stored  # type: ignore[index]
    coord.store.close()
