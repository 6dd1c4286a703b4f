"""Shared helpers for the tests that drive a secure round through an in-process `Coordinator`
(no HTTP, no tests here): a coordinator holding one secure task, the devices' SecAgg sessions
joined from `secure_setup`, and what a session uploads at each stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sdk.secure
from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service.rounds import Coordinator, TaskRuntime
from protocol.secagg import SecAggHeader, SecurePlan, Stage
from sdk.secure import SecureParticipant, SecureSession

from .test_service_support import SPEC, initial_params, task_config

STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)


def secure_coordinator(
    tmp_path: Path,
    clients: int,
    min_reports: int,
    clock: Callable[[], float] = lambda: 1000.0,
    **secure: object,
) -> tuple[Coordinator, int]:
    """A coordinator on `tmp_path / "p.db"` whose clock is `clock` (by default one standing at
    1000 s), holding one secure task with its initial model: 2 rounds of `clients` devices,
    `min_reports`, a 600 s deadline, coord_fraction 0.2 and 300 s stages (and `secure`'s
    settings): (it, task id)."""
    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), clock=clock)
    coord.restore()
    cfg = task_config(
        clients_per_round=clients, min_reports=min_reports, deadline_s=600.0, rounds=2,
        secure={"coord_fraction": 0.2, "stage_timeout_s": 300.0, **secure},
    )  # fmt: skip
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    return coord, task_id


def join_round(
    coord: Coordinator, rt: TaskRuntime, round_id: int, devices: list[str]
) -> tuple[dict[str, SecureSession], dict[str, int]]:
    """Each device's session in the secure round (its plan and headers from `secure_setup`,
    in the order given), and each device's node number."""
    sessions, node_of = {}, {}
    for d in devices:
        plan, headers = coord.secure_setup(round_id, d)
        digest = bytes.fromhex(headers[str(SecAggHeader.DIGEST)])
        node_of[d] = int(headers[str(SecAggHeader.NODE)])
        sessions[d] = SecureParticipant(SPEC.size).join(plan, digest, rt.published, node_of[d])
    return sessions, node_of


def stage_body(session: SecureSession, stage: Stage, got: bytes | None, device: str) -> bytes:
    """What `device`'s session uploads at `stage`, given the stage before's download `got`:
    at the masked input an update of 0.01 in every coordinate, weight 1, its masks' randomness
    seeded by the device id."""
    if stage == Stage.ADVERTISE_KEYS:
        return session.advertise()
    if stage == Stage.SHARE_KEYS:
        return session.share_keys(got)
    if stage == Stage.MASKED_INPUT:
        update = np.full(SPEC.size, 0.01, np.float32)
        return session.masked_input(got, update, 1, np.random.default_rng(int(device, 16)))
    return session.unmask(got)


def forge_weight(
    monkeypatch: pytest.MonkeyPatch,
    victim_node: int,
    weight: Callable[[SecurePlan], int],
    times: int = 1 << 30,
) -> None:
    """Node `victim_node` sends `weight(plan)` as its weight coordinate (the vector's last
    entry), in the first `times` groups that encode (the in-process driver runs groups in
    order)."""
    honest = sdk.secure.encode_for_plan
    left = [times]

    def forged(u: Any, plan: SecurePlan, w: int, rng: Any, noise_rng: Any = None, node: Any = None):  # type: ignore[no-untyped-def]
        vector, sent = honest(u, plan, w, rng, noise_rng, node)
        if node == victim_node and left[0] > 0:
            left[0] -= 1
            vector[-1] = np.uint64(weight(plan))
        return vector, sent

    monkeypatch.setattr(sdk.secure, "encode_for_plan", forged)
