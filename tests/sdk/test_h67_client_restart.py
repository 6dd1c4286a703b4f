"""After a restart the client no longer knows which layout a task's residual is of (it keeps
that in memory only); the app directory does (helper-67: the residual's trailer names it).
A record of the layout a task's model had before a coordinator's restore, returned after the
device restarted, is dropped as delivered instead of being added to the new model's residual
of the same size."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from compression import CodecConfig, ModelSpec, UpdateCodec
from sdk.device_store import AcceptedUpload, DeviceStore

from .test_client import SPEC
from .test_h51_task_residuals import DELTA, _accept, _client, _run, _task

# Same size as SPEC (36 scalars), another layout.
OTHER = ModelSpec.from_shapes([("w", (8, 4)), ("b", (4,))])


def _frame(values: np.ndarray, spec: ModelSpec) -> bytes:
    frame, _ = UpdateCodec(spec, CodecConfig.dense()).encode(
        values, np.random.default_rng(0), weight=1.0
    )
    return frame


def _abandon(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/checkin":
        return httpx.Response(
            200, json={"action": "wait", "retry_after_s": 1.0, "round_outcome": "abandoned"}
        )
    return _accept(request)


def test_a_record_of_the_old_layout_returned_after_a_restart_is_dropped(tmp_path: Path) -> None:
    # Prepare: a record of task 1's round 3 in layout SPEC (from before the coordinator's
    # restore); a later run of the app ran a round of task 1 in layout OTHER
    old = np.linspace(-1, 1, SPEC.size).astype(np.float32)
    DeviceStore(tmp_path).save_accepted(AcceptedUpload(3, _frame(old, SPEC), SPEC, 1))
    client = _client(tmp_path, _accept)
    _run(client, _task(1, 6, OTHER), DELTA[2], OTHER)
    client.close()
    before = DeviceStore(tmp_path).load_residual(OTHER.size, 1)
    assert before is not None

    # Execute: the app restarts (no layout known in memory); a check-in says round 3 was
    # abandoned
    client = _client(tmp_path, _abandon)
    answer = client.check_in(1)

    # Assert: the record is gone, OTHER's residual as it was; before, SPEC's content was added
    # to it (the restarted client could not tell the layouts apart)
    assert answer.round_outcome == "abandoned"
    assert DeviceStore(tmp_path).load_accepted(3) is None
    after = DeviceStore(tmp_path).load_residual(OTHER.size, 1)
    assert after is not None
    np.testing.assert_array_equal(after.residual, before.residual)
    client.close()
