"""A grouped secure round commits only with at least `min_reports` contributors: the service
passes its round's `min_reports` to the registry (helper-73's feea727 gave
`SecureRegistry.finish` a `min_contributors`, default 1). Before, 9 devices in groups of 3 with
min_reports 6, two groups aborted at the masked input, committed the one group left: 3
contributors in the model. Also: a task whose rounds open with at least max(min_reports, 3)
devices is planned from that size, not from 3."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from coordinator.service import ServiceConfig, Store
from coordinator.service.errors import ApiError
from coordinator.service.rounds import Coordinator
from protocol.messages import TensorShape
from protocol.secagg import Stage
from tests.coordinator._secure_inproc import STAGES, join_round, secure_coordinator, stage_body
from tests.coordinator.test_service_support import task_config

DEVICES = [f"{i:032x}" for i in range(9)]


def _coordinator(tmp_path: Path, min_reports: int) -> tuple[Coordinator, int]:
    return secure_coordinator(tmp_path, clients=9, min_reports=min_reports, group_size=3)


def _round_with_two_groups_short(coord: Coordinator, task_id: int) -> int:
    """One secure round of the 9 devices in which two devices of each of two groups never
    send their masked input (those groups abort: 1 of 3 inputs is below the threshold)."""
    for d in DEVICES:
        coord.check_in(d, task_id)
    rt = coord.runtimes[task_id]
    assert rt.current is not None and rt.secure is not None
    rid = rt.current.round_id
    groups = [sr.device_ids for sr in rt.secure.registry._rounds[rid].task.groups]
    silent = {d for g in groups[:2] for d in sorted(g)[:2]}
    sessions, _ = join_round(coord, rt, rid, sorted(rt.current.selected))
    for stage, before in zip(STAGES, (None, *STAGES[:-1]), strict=True):
        for d, s in sessions.items():
            if d in silent and stage in (Stage.MASKED_INPUT, Stage.UNMASK):
                continue
            try:
                got = coord.secure_download(rid, before, d) if before is not None else None
            except ApiError as exc:
                assert exc.status == 410, exc  # this device's group aborted
                continue
            coord.secure_upload(rid, stage, d, stage_body(s, stage, got, d))
        if rt.current is not None and not rt.secure.registry.ready(rid):
            rt.secure.registry.close_stage(rid, stage)
    asyncio.run(coord.close_round(rt))
    return rid


def test_a_grouped_round_with_fewer_contributors_than_min_reports_is_not_committed(
    tmp_path: Path,
) -> None:
    # Prepare: min_reports 6 of 9; two of the three groups will abort
    coord, task_id = _coordinator(tmp_path, min_reports=6)
    version = coord.runtimes[task_id].version
    # Execute
    rid = _round_with_two_groups_short(coord, task_id)
    # Assert: abandoned, the model untouched
    status = coord.round_status(rid)
    assert status.state == "abandoned", status
    assert coord.runtimes[task_id].version == version


def test_the_same_round_commits_when_min_reports_allows_one_group(tmp_path: Path) -> None:
    # Control: min_reports 3, the group left (3 contributors) is enough
    coord, task_id = _coordinator(tmp_path, min_reports=3)
    version = coord.runtimes[task_id].version
    rid = _round_with_two_groups_short(coord, task_id)
    assert coord.round_status(rid).state == "committed"
    assert coord.runtimes[task_id].version == version + 1


def _noisy_task(min_reports: int) -> Any:
    # Skellam z = 45,000 at 16 bits over 100 of 1,000 coordinates: a round of 3 devices needs
    # more per-device noise than the sampler draws (2^63), one of 4 does not (test_h73's
    # figures). No groups: a round holds every device that came, at least min_reports.
    secure = {
        "noise": "skellam", "noise_multiplier": 45_000.0, "value_bits": 16,
        "coord_fraction": 0.1, "stage_timeout_s": 300.0,
    }  # fmt: skip
    return task_config(
        spec=[TensorShape("w", [1000])], clients_per_round=10, min_reports=min_reports,
        deadline_s=600.0, secure=secure,
    )  # fmt: skip


def test_a_task_is_planned_from_the_smallest_round_its_min_reports_lets_open(
    tmp_path: Path,
) -> None:
    coord = Coordinator(Store(tmp_path / "p.db"), ServiceConfig(db_path=str(tmp_path / "p.db")))
    coord.restore()
    # A round of 3 can open: refused at creation
    with pytest.raises(ValueError, match="variance"):
        coord.create_task(_noisy_task(min_reports=3))
    # Rounds open with 4 or more: accepted (before, planned from 3 and refused)
    coord.create_task(_noisy_task(min_reports=4))
