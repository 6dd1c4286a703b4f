"""The client's in-memory residuals (an encoder per task) after a step on the app directory
raised without the process dying (a full disk: OSError): the app directory holds the state
(the step happened whole or not at all), so the next round must start from it, not from a
residual in memory that assumes an upload the directory never kept or a return it did not
finish."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import sdk.device_store as device_store

from .test_client import SPEC
from .test_h51_task_residuals import DELTA, _accept, _client, _decoded, _task


def _disk_full_on(monkeypatch: pytest.MonkeyPatch, name: str, attr: str = "_write") -> None:
    real = getattr(device_store, attr)

    def write(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(device_store, attr, write)


def test_an_upload_whose_save_failed_leaves_the_residual_it_did_not_keep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: round 5 of task 1 leaves a residual; round 6's pending save fails (disk full)
    client = _client(tmp_path, _accept)
    params = np.zeros(SPEC.size, np.float32)
    client.upload(client._core.encode(_task(1, 5), SPEC, params, params + DELTA[1], 8), SPEC)
    kept = client._core._encoders[1].feedback.residual.copy()
    _disk_full_on(monkeypatch, "pending.json")
    with pytest.raises(OSError):
        client._core.encode(_task(1, 6), SPEC, params, params + DELTA[2], 8)
    monkeypatch.undo()

    # Execute: round 7, in the same process
    pending = client._core.encode(_task(1, 7), SPEC, params, params + DELTA[3], 8)
    client.upload(pending, SPEC)
    after = client._core._encoders[1].feedback.residual

    # Assert: round 7 sends its delta and the residual round 5 kept, nothing of round 6 (which
    # is lost, as a dropout's). Before, it started from the residual that assumed round 6's
    # frame sent, so what that frame carried of the kept residual was never sent
    np.testing.assert_allclose(_decoded(pending.frame) + after, DELTA[3] + kept, atol=1e-5)
    client.close()


def test_a_refusal_whose_return_failed_after_its_commit_is_not_undone_by_the_next_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: task 1's upload to round 5 is refused for good; the return into the residual
    # commits, then a later unlink fails (disk trouble), so the client never adopts it
    refuse = {"on": True}

    def handler(request: httpx.Request) -> httpx.Response:
        if refuse["on"]:
            return httpx.Response(409, json={"reason": "round_closed", "detail": "late"})
        return _accept(request)

    client = _client(tmp_path, handler)
    params = np.zeros(SPEC.size, np.float32)
    first = client._core.encode(_task(1, 5), SPEC, params, params + DELTA[1], 8)
    _disk_full_on(monkeypatch, "pending.frame", "_unlink")
    with pytest.raises(OSError):
        client.upload(first, SPEC)
    monkeypatch.undo()
    refuse["on"] = False

    # Execute: the next round, in the same process
    second = client._core.encode(_task(1, 6), SPEC, params, params + DELTA[2], 8)
    client.upload(second, SPEC)
    after = client._core._encoders[1].feedback.residual

    # Assert: everything of round 5 (its whole delta: the refused frame is back) and round 6
    # is either sent in round 6 or in the residual. Before, round 6 started from the residual
    # in memory, which assumed round 5's frame delivered
    np.testing.assert_allclose(_decoded(second.frame) + after, DELTA[1] + DELTA[2], atol=1e-5)
    client.close()
