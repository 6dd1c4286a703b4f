"""A secure round's setup after the round's deadline is refused 409 `round_closed`, as the
device's stage uploads already were (`Coordinator.secure_upload`), and the refusal changes
nothing (s65e).

Before, between the deadline and the tick that closes the round, `secure_setup` served the plan:
the device trained for a round whose first upload it would be refused. The SDK ends the round
with an untrained report on that answer (`tests/coordinator/test_s65c_setup_client.py`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service.errors import ApiError
from protocol.names import Reason
from protocol.secagg import Stage

from ._secure_inproc import secure_coordinator


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_setup_after_the_round_deadline_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    # Prepare: a secure round of 3 devices open (600 s deadline); device a set up in time
    clock = _Clock(1000.0)
    coord, task_id = secure_coordinator(tmp_path, clients=3, min_reports=3, clock=clock)
    for d in ("a", "b", "c"):
        coord.check_in(d, task_id)
    rt = coord.runtimes[task_id]
    cur = rt.current
    assert cur is not None and rt.secure is not None
    round_id = cur.round_id
    plan, _headers = coord.secure_setup(round_id, "a")
    # Execute: b asks for its plan at the deadline, before any tick closed the round
    clock.now = cur.deadline
    with pytest.raises(ApiError) as refused:
        coord.secure_setup(round_id, "b")
    # Assert: the same answer its upload would get; the round and its registry unchanged
    assert (refused.value.status, refused.value.reason) == (409, Reason.ROUND_CLOSED)
    assert refused.value.detail == f"round {round_id} is past its deadline"
    with pytest.raises(ApiError) as upload:
        coord.secure_upload(round_id, Stage.ADVERTISE_KEYS, "b", b"x")
    assert (upload.value.status, upload.value.reason, upload.value.detail) == (
        refused.value.status,
        refused.value.reason,
        refused.value.detail,
    )
    assert rt.current is cur and not cur.closing and cur.uploaded == set()
    assert rt.secure.registry.current_stage(round_id) == Stage.ADVERTISE_KEYS
    # Just before the deadline the plan was served, the same bytes a got
    clock.now = cur.deadline - 0.001
    assert coord.secure_setup(round_id, "c")[0] == plan
    coord.store.close()
