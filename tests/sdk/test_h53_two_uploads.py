"""Two uploads encoded before either is settled (two rounds in flight on one `AsyncClient`, or
`encode_update` / `upload` called out of turn): the app directory holds the later one as
pending. Settling the earlier one must not act on the later one: a refusal must not put the
earlier upload's content into the later upload's task's residual, nor an acceptance forget
the later upload."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from sdk.client import ClientError
from sdk.device_store import DeviceStore

from .test_client import SPEC
from .test_h51_task_residuals import DELTA, _accept, _client, _task


def test_refusing_an_upload_the_directory_no_longer_holds_leaves_the_other_tasks_residual(
    tmp_path: Path,
) -> None:
    # Prepare: task 1's upload to round 5 is encoded, then task 2's to round 6 (now pending)
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"reason": "round_closed", "detail": "late"})

    client = _client(tmp_path, refuse)
    params = np.zeros(SPEC.size, np.float32)
    first = client._core.encode(_task(1, 5), SPEC, params, DELTA[1], 8)
    second = client._core.encode(_task(2, 6), SPEC, params, DELTA[2], 8)
    kept_2 = client._core._encoders[2].feedback.residual.copy()

    # Execute: round 5 refuses task 1's upload
    with pytest.raises(ClientError):
        client.upload(first, SPEC)

    # Assert: task 2's residual is its own (before, it took task 1's frame), and task 2's
    # upload is still pending
    ef = DeviceStore(tmp_path).load_residual(SPEC.size, 2)
    assert ef is not None
    np.testing.assert_allclose(ef.residual, kept_2, atol=1e-6)
    np.testing.assert_allclose(client._core._encoders[2].feedback.residual, kept_2, atol=1e-6)
    pending = DeviceStore(tmp_path).load_pending()
    assert pending is not None and pending.key == second.key
    client.close()


def test_accepting_an_upload_the_directory_no_longer_holds_keeps_the_pending_one(
    tmp_path: Path,
) -> None:
    # Prepare: as above, the coordinator accepts
    client = _client(tmp_path, _accept)
    params = np.zeros(SPEC.size, np.float32)
    first = client._core.encode(_task(1, 5), SPEC, params, DELTA[1], 8)
    second = client._core.encode(_task(2, 6), SPEC, params, DELTA[2], 8)

    # Execute: round 5 accepts task 1's upload
    client.upload(first, SPEC)

    # Assert: task 1's upload is a record, task 2's still pending (before, it was forgotten:
    # had its own upload then failed, nothing would have re-sent it)
    store = DeviceStore(tmp_path)
    assert store.accepted_rounds() == [5]
    pending = store.load_pending()
    assert pending is not None and pending.key == second.key
    client.close()
