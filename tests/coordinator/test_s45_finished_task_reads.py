"""A finished task's model download reads its model from the store only to send a snapshot
(s45, helper-381's review of `release_finished`).

`plan_model` weighed every delta chain against the fp32 snapshot's length, `len(snapshot())`:
for a finished task, whose model is no longer in memory, that read the model back from the
store, checked its digest and encoded it, on the event loop, for every chain asked for once
the snapshot had left the coordinator's few kept ones, and even for a device that already held
the current version (an empty chain: 66 ms for 2M parameters, against 2 ms before). Now a chain
from the current version is sent without looking at the snapshot, and the snapshot's length is
kept once known.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service.rounds import Coordinator

from .test_s45_finished_task_memory import _world


def _count_loads(coord: Coordinator, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    loads: list[int] = []
    real = coord.store.task_model

    def counted(task_id: int) -> tuple[bytes, bytes | None]:
        loads.append(task_id)
        return real(task_id)

    monkeypatch.setattr(coord.store, "task_model", counted)
    return loads


def test_a_device_holding_the_current_version_reads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: finished tasks, their models let go of
    coord, ids = _world(tmp_path)
    loads = _count_loads(coord, monkeypatch)
    # Execute: a download from the version each holds, auto and delta
    for t in ids:
        v = coord.runtimes[t].version
        for fmt in ("auto", "delta"):
            answer = coord.plan_model(t, v, fmt, "fp32")
            assert answer.body is None  # the (empty) chain
    # Assert: no model read back (before: one per request)
    assert loads == []


def test_a_chain_weighs_against_the_snapshot_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    coord, ids = _world(tmp_path)
    loads = _count_loads(coord, monkeypatch)
    plain = ids[1]  # done after 3 rounds
    v = coord.runtimes[plain].version
    # Execute: chains from an older version, asked many times while other finished tasks'
    # snapshots go through the coordinator's few kept ones
    for _ in range(5):
        coord.plan_model(plain, v - 1, "auto", "fp32")
        for t in ids:
            for dtype in ("fp32", "fp16"):
                coord.plan_model(t, None, "auto", dtype)
    loads_for_plain = loads.count(plain)
    # Assert: the chain's weighing read the model at most once; the snapshots themselves are
    # read back as the kept ones turn over (1 per fp32/fp16 request at most)
    assert loads_for_plain <= 1 + 2 * 5, loads
    before = loads_for_plain
    for _ in range(5):
        coord.plan_model(plain, v - 1, "auto", "fp32")
    assert loads.count(plain) == before  # the length is kept: no read for a chain
