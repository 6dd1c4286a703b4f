"""Stop 46: a message for a secure stage that is not open yet is 409 `invalid_state`
(`WrongStage`) whatever its body holds. helper-384 sent a well-framed masked input with an
invalid body while advertise-keys was open: 422 `bad_frame` (`MalformedMessage`), as the
round decoded the body before it looked at the stage; a valid body got 409. http-api.md's
error table gives 409 for "a secure stage message for a stage that is not open"."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service.errors import ApiError
from protocol.names import Reason
from protocol.secagg import Stage
from tests.coordinator._secure_inproc import join_round, secure_coordinator

DEVICES = [f"{i:032x}" for i in range(1, 5)]


@pytest.mark.parametrize(
    "stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK], ids=lambda s: str(s)
)
@pytest.mark.parametrize(
    "body", [b"", b"PSA1\x05" + bytes(40), bytes(1000)], ids=["empty", "framed", "zeros"]
)
def test_a_message_for_a_stage_not_open_is_409_whatever_its_body(
    tmp_path: Path, stage: Stage, body: bytes
) -> None:
    # Prepare: a secure round of 4 devices in advertise-keys; one has advertised
    coord, task_id = secure_coordinator(tmp_path, clients=4, min_reports=3, stage_timeout_s=60)
    rt = coord.runtimes[task_id]
    for d in DEVICES:
        coord.check_in(d, task_id)
    assert rt.current is not None and rt.secure is not None
    rid = rt.current.round_id
    sessions, _ = join_round(coord, rt, rid, DEVICES)
    coord.secure_upload(rid, Stage.ADVERTISE_KEYS, DEVICES[0], sessions[DEVICES[0]].advertise())
    counts = rt.secure.registry.stage_counts(rid)

    # Execute
    with pytest.raises(ApiError) as info:
        coord.secure_upload(rid, stage, DEVICES[1], body)

    # Assert: 409 naming the open stage; nothing taken, the round goes on
    err = info.value
    assert (err.status, err.reason) == (409, Reason.INVALID_STATE), err
    assert err.detail == (
        f"WrongStage: stage {stage} is not open: the group is in stage advertise-keys"
    )
    assert rt.secure.registry.stage_counts(rid) == counts
    assert rt.secure.registry.current_stage(rid) == Stage.ADVERTISE_KEYS
    coord.secure_upload(rid, Stage.ADVERTISE_KEYS, DEVICES[1], sessions[DEVICES[1]].advertise())
