"""The stage deadlines of `SecureRegistry` hold at upload time: an upload after its stage's
deadline is refused even when no orchestrator tick has closed the stage yet."""

from __future__ import annotations

import numpy as np
import pytest

from compression import ModelSpec
from coordinator.secure import SecureConfig, SecureCoordinator
from coordinator.service._secagg_routes import SecureRegistry
from coordinator.service.secure import SecureTaskState, parse_secure, stage_cap
from protocol.secagg import RoundAborted, Stage, WrongStage
from sdk.secure import SecureParticipant, SecureSession
from tests._clock import Clock

D = 300
DEVS = [f"dev-{i}" for i in range(5)]
SPEC = ModelSpec.from_shapes([("w", (D,))])


def _registry(
    timeout_s: float | None, idle_s: float | None = None
) -> tuple[SecureRegistry, Clock, int, dict[str, SecureSession]]:
    clock = Clock(100.0)
    coord = SecureCoordinator(np.zeros(D, np.float32), SecureConfig(coord_fraction=0.2))
    reg = SecureRegistry(coord, clock, stage_timeout_s=timeout_s, stage_idle_s=idle_s)
    task = reg.open_round(DEVS, 9)
    sessions = {}
    for d in DEVS:
        plan, digest, node = reg.setup(task.round_id, d)
        sessions[d] = SecureParticipant(D).join(plan, digest, coord.params, node)
    return reg, clock, task.round_id, sessions


def test_an_upload_after_the_stage_timeout_is_refused_without_a_tick() -> None:
    # Prepare: four of five advertise in time
    reg, clock, rid, sess = _registry(timeout_s=10.0)
    bodies = {d: s.advertise() for d, s in sess.items()}
    for d in DEVS[:4]:
        assert reg.upload(rid, Stage.ADVERTISE_KEYS, d, bodies[d])
    # Execute: the fifth arrives after the deadline; nobody called close_due
    clock.now += 10.0
    with pytest.raises(WrongStage, match="closed"):
        reg.upload(rid, Stage.ADVERTISE_KEYS, DEVS[4], bodies[DEVS[4]])
    # Assert: the stage closed with the four; a retry of an accepted upload is still idempotent
    assert reg.current_stage(rid) == Stage.SHARE_KEYS
    assert reg.upload(rid, Stage.ADVERTISE_KEYS, DEVS[0], bodies[DEVS[0]]) is False
    assert reg.download(rid, Stage.ADVERTISE_KEYS, DEVS[0]) is not None
    with pytest.raises(PermissionError):
        reg.download(rid, Stage.ADVERTISE_KEYS, DEVS[4])
    assert reg.stage_counts(rid)[Stage.ADVERTISE_KEYS] == 4


def test_a_late_upload_that_leaves_too_few_aborts_the_round_cleanly() -> None:
    # Prepare: two of five advertise (the threshold is 3)
    reg, clock, rid, sess = _registry(timeout_s=10.0)
    bodies = {d: s.advertise() for d, s in sess.items()}
    for d in DEVS[:2]:
        reg.upload(rid, Stage.ADVERTISE_KEYS, d, bodies[d])
    # Execute
    clock.now += 11.0
    with pytest.raises(RoundAborted, match="2 nodes advertised keys, need 3"):
        reg.upload(rid, Stage.ADVERTISE_KEYS, DEVS[2], bodies[DEVS[2]])
    # Assert
    assert reg.ready(rid) and reg.abort_reasons(rid) == ["2 nodes advertised keys, need 3"]
    assert not reg.finish(rid).committed


def test_the_idle_deadline_also_holds_at_upload_time() -> None:
    # Prepare: one upload, then silence for the idle time (well inside the stage timeout)
    reg, clock, rid, sess = _registry(timeout_s=100.0, idle_s=1.0)
    bodies = {d: s.advertise() for d, s in sess.items()}
    for d in DEVS[:3]:
        reg.upload(rid, Stage.ADVERTISE_KEYS, d, bodies[d])
    clock.now += 0.5
    reg.upload(rid, Stage.ADVERTISE_KEYS, DEVS[3], bodies[DEVS[3]])  # in time: resets idle
    # Execute + Assert
    clock.now += 1.0
    with pytest.raises(WrongStage):
        reg.upload(rid, Stage.ADVERTISE_KEYS, DEVS[4], bodies[DEVS[4]])
    assert reg.stage_counts(rid)[Stage.ADVERTISE_KEYS] == 4


def test_without_a_timeout_only_close_due_closes_stages() -> None:
    # Prepare: the loopback router's registry (no timeout given)
    reg, clock, rid, sess = _registry(timeout_s=None)
    bodies = {d: s.advertise() for d, s in sess.items()}
    reg.upload(rid, Stage.ADVERTISE_KEYS, DEVS[0], bodies[DEVS[0]])
    # Execute
    clock.now += 1e6
    reg.upload(rid, Stage.ADVERTISE_KEYS, DEVS[1], bodies[DEVS[1]])
    # Assert: still open until the orchestrator closes it
    assert reg.current_stage(rid) == Stage.ADVERTISE_KEYS
    assert reg.close_due(rid, 10.0) == 1
    assert reg.current_stage(rid) is None  # two advertised, three needed: aborted


def test_the_service_registry_carries_the_task_stage_timing() -> None:
    # Prepare
    settings = parse_secure(
        {"coord_fraction": 0.2, "stage_timeout_s": 7.0, "stage_idle_s": 2.0},
        seed=0,
        server_lr=1.0,
    )
    # Execute
    state = SecureTaskState(settings, np.zeros(D, np.float32), SPEC, [])
    # Assert: the registry enforces the task's timing; a gone round has no cap
    assert (state.registry.stage_timeout_s, state.registry.stage_idle_s) == (7.0, 2.0)
    assert state.upload_cap(12345, Stage.MASKED_INPUT) == 0
    task = state.registry.open_round(DEVS, 3)
    plans = [task.groups[0].plan]
    assert state.upload_cap(3, Stage.ADVERTISE_KEYS) == stage_cap(plans, Stage.ADVERTISE_KEYS)
