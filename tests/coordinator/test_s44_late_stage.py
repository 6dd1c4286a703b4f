"""A stage upload that arrives after its stage closed without the device, while the round runs
its later stages, is answered 403 `not_selected` (the device is out of the round), as the
download of that stage and the device's later stages are: before, it was 409 `invalid_state`
(`WrongStage: stage advertise-keys is closed`), which the SDK raised as a `ClientError`.
The answer is the same whichever moment closed the stage: the orchestrator's tick
(`close_due`) before the upload came, or the upload itself, the first request after the
deadline. A stage that has not opened yet stays 409 `invalid_state` (`WrongStage`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.service._secagg_routes import StageClosedWithout, _error
from coordinator.service.errors import ApiError
from coordinator.service.rounds import Coordinator, TaskRuntime
from protocol.names import Reason
from protocol.secagg import Stage, UnmaskResponse, WrongStage
from sdk.secure import SecureSession
from tests.coordinator._secure_inproc import STAGES, join_round, secure_coordinator, stage_body
from tests.coordinator.test_service_support import StageClock

DEVICES = [f"{i:032x}" for i in range(1, 5)]
LATE = DEVICES[3]
TIMEOUT_S = 1.0


def _round(
    tmp_path: Path,
) -> tuple[Coordinator, TaskRuntime, int, StageClock, dict[str, SecureSession], dict[str, int]]:
    """A secure round of 4 devices (min_reports 3, 1 s stages on a stepped clock) in which
    every device but `LATE` advertised its keys: (coordinator, runtime, round id, its stage
    clock, each device's session, each device's node)."""
    coord, task_id = secure_coordinator(
        tmp_path, clients=4, min_reports=3, stage_timeout_s=TIMEOUT_S
    )
    rt = coord.runtimes[task_id]
    assert rt.secure is not None
    clock = StageClock()
    rt.secure.registry.clock = clock
    for d in DEVICES:
        coord.check_in(d, task_id)
    assert rt.current is not None
    rid = rt.current.round_id
    sessions, node_of = join_round(coord, rt, rid, DEVICES)
    for d in DEVICES[:3]:
        coord.secure_upload(rid, Stage.ADVERTISE_KEYS, d, sessions[d].advertise())
    return coord, rt, rid, clock, sessions, node_of


def _refusal(coord: Coordinator, rid: int, stage: Stage, device: str, body: bytes) -> ApiError:
    with pytest.raises(ApiError) as info:
        coord.secure_upload(rid, stage, device, body)
    return info.value


@pytest.mark.parametrize("delay_s", [1.1, 1.25])
@pytest.mark.parametrize("closed_by", ["tick", "upload"])
def test_an_upload_after_its_stage_closed_without_the_device_is_403_not_selected(
    tmp_path: Path, closed_by: str, delay_s: float
) -> None:
    # Prepare: the late device's advertisement comes `delay_s` after the stage opened
    coord, rt, rid, clock, sessions, _ = _round(tmp_path)
    assert rt.secure is not None
    registry = rt.secure.registry
    clock.advance(delay_s)
    if closed_by == "tick":
        assert registry.close_due(rid, TIMEOUT_S) == 1
        assert registry.current_stage(rid) == Stage.SHARE_KEYS
    else:
        assert registry.current_stage(rid) == Stage.ADVERTISE_KEYS  # nothing closed it yet
    body = sessions[LATE].advertise()
    # Execute
    err = _refusal(coord, rid, Stage.ADVERTISE_KEYS, LATE, body)
    # Assert: the documented answer, the same for both closing moments
    assert (err.status, err.reason) == (403, Reason.NOT_SELECTED), err
    assert "stage advertise-keys is closed" in err.detail
    assert f"closed without device {LATE}" in err.detail
    # the round goes on with the three; the late device is out of it everywhere
    assert registry.current_stage(rid) == Stage.SHARE_KEYS
    with pytest.raises(ApiError) as info:
        coord.secure_download(rid, Stage.ADVERTISE_KEYS, LATE)
    assert (info.value.status, info.value.reason) == (403, Reason.NOT_SELECTED)
    # a retry is answered the same
    again = _refusal(coord, rid, Stage.ADVERTISE_KEYS, LATE, body)
    assert (again.status, again.reason, again.detail) == (err.status, err.reason, err.detail)
    _finish(coord, rt, rid, sessions)
    assert coord.round_status(rid).state == "committed"


def _finish(
    coord: Coordinator, rt: TaskRuntime, rid: int, sessions: dict[str, SecureSession]
) -> None:
    """The three that advertised run the later stages; the round closes."""
    assert rt.secure is not None
    for stage, before in zip(STAGES[1:], STAGES[:-1], strict=True):
        for d in DEVICES[:3]:
            got = coord.secure_download(rid, before, d)
            coord.secure_upload(rid, stage, d, stage_body(sessions[d], stage, got, d))
    assert rt.secure.registry.ready(rid)
    asyncio.run(coord.close_round(rt))


def test_a_stage_not_open_yet_is_still_409_wrong_stage(tmp_path: Path) -> None:
    # Prepare: advertise-keys closed without LATE; the three are in share-keys
    coord, _rt, rid, clock, sessions, node_of = _round(tmp_path)
    clock.advance(1.1)
    late = _refusal(coord, rid, Stage.ADVERTISE_KEYS, LATE, sessions[LATE].advertise())
    assert late.status == 403
    # Execute + Assert: a member's upload of a stage its group has not opened yet
    member = DEVICES[0]
    too_soon = UnmaskResponse(rid, node_of[member], ()).to_bytes()
    early = _refusal(coord, rid, Stage.UNMASK, member, too_soon)
    assert (early.status, early.reason) == (409, Reason.INVALID_STATE), early
    assert early.detail.startswith("WrongStage")


def test_the_registry_refusal_is_a_wrong_stage_and_a_permission_error() -> None:
    # The registry's callers still catch a late upload as WrongStage; the loopback router
    # answers it as a device out of the round, as the service does.
    exc = StageClosedWithout("stage advertise-keys is closed: it closed without device d")
    assert isinstance(exc, WrongStage) and isinstance(exc, PermissionError)
    response = _error(exc)
    assert response.status_code == 403
    assert Reason.NOT_SELECTED in bytes(response.body).decode()
    assert _error(WrongStage("stage share-keys is not open")).status_code == 409
