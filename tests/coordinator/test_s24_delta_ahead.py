"""`GET /v1/tasks/{id}/model?format=delta` with a `have` newer than the task's version is 409
`unknown_version`, as before; its detail said "max chain 16", pointing a device that is ahead of
the coordinator (a restored backup, another task's version) the wrong way (helper-253). It now
says the task's version is older and to ask for the snapshot; a device too far behind still
reads the max chain, and one that names no version is told to."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service.errors import ApiError
from protocol.names import Reason

from .test_h79_stop import _start, _task
from .test_service_support import task_config


@pytest.mark.parametrize(
    ("have", "says", "not_says"),
    [
        (5, "the task is at version 0, older than 5; ask for the snapshot", "max chain"),
        (None, "ask with ?have=", "max chain"),
    ],
)
def test_a_delta_from_a_version_the_task_does_not_have_says_why(
    tmp_path: Path, have: int | None, says: str, not_says: str
) -> None:
    coord = _start(tmp_path / "p.db")
    try:
        task_id = _task(coord, task_config(rounds=2, clients_per_round=3))
        with pytest.raises(ApiError) as caught:
            coord.model(task_id, have, "delta", "fp32")
        assert (caught.value.status, caught.value.reason) == (409, Reason.UNKNOWN_VERSION)
        assert says in caught.value.detail and not_says not in caught.value.detail
        # The version the task has is still a chain (an empty one)
        body, headers, _ = coord.model(task_id, 0, "delta", "fp32")
        assert body[:4] == b"PLCH"
    finally:
        coord.store.close()
