"""A task id can name another model of the same size (a coordinator restored from a backup hands
task ids out again, to a task whose model has another layout): the residual held for the task
then holds error of the other model's coordinates. Where this process knows the layout of the
model its residual for a task is of (it ran that task's rounds), a round of another layout
starts from no residual, and a record or refused upload of another layout is dropped as
delivered, as for another size (devices.md). Before, both were added to the residual by size
alone: the other model's content was sent as an update of this one."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from compression import CodecConfig, ModelSpec, UpdateCodec
from sdk.device_store import AcceptedUpload, DeviceStore

from .test_client import SPEC
from .test_h51_task_residuals import DELTA, _accept, _client, _decoded, _run, _task

# Same size as SPEC (36 scalars), another layout.
OTHER = ModelSpec.from_shapes([("w", (8, 4)), ("b", (4,))])


def _frame(values: np.ndarray, spec: ModelSpec) -> bytes:
    frame, _ = UpdateCodec(spec, CodecConfig.dense()).encode(
        values, np.random.default_rng(0), weight=1.0
    )
    return frame


def test_a_round_of_another_layout_does_not_send_the_residual_of_the_old_one(
    tmp_path: Path,
) -> None:
    # Prepare: a round of task 1 in layout SPEC leaves a residual
    client = _client(tmp_path, _accept)
    _run(client, _task(1, 5), DELTA[1])
    assert np.any(client._core._encoders[1].feedback.residual)

    # Execute: task 1's next round is of a model of the same size in another layout
    frame = _run(client, _task(1, 6, OTHER), DELTA[2], OTHER)

    # Assert: it sent its delta only (what it sent and what it keeps add up to the delta);
    # before, it added SPEC's residual to OTHER's coordinates
    kept = client._core._encoders[1].feedback.residual
    np.testing.assert_allclose(_decoded(frame, OTHER) + kept, DELTA[2], atol=1e-5)
    stored = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert stored is not None
    np.testing.assert_array_equal(stored.residual, kept)
    client.close()


def test_a_record_of_another_layout_is_dropped_not_returned(tmp_path: Path) -> None:
    # Prepare: a record of task 1's round 3 in layout SPEC (from before the restore), then a
    # round of task 1 in layout OTHER; the coordinator says round 3 was abandoned
    old = np.linspace(-1, 1, SPEC.size).astype(np.float32)
    DeviceStore(tmp_path).save_accepted(AcceptedUpload(3, _frame(old, SPEC), SPEC, 1))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/checkin":
            return httpx.Response(
                200, json={"action": "wait", "retry_after_s": 1.0, "round_outcome": "abandoned"}
            )
        return _accept(request)

    client = _client(tmp_path, handler)
    _run(client, _task(1, 6, OTHER), DELTA[2], OTHER)
    before = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert before is not None

    # Execute: the check-in names round 3 (the oldest record)
    answer = client.check_in(1)

    # Assert: the record is gone and the residual (stored and in memory) is as it was; before,
    # SPEC's content was added to OTHER's residual in the app directory
    assert answer.round_outcome == "abandoned"
    assert DeviceStore(tmp_path).load_accepted(3) is None
    after = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert after is not None
    np.testing.assert_array_equal(after.residual, before.residual)
    np.testing.assert_array_equal(client._core._encoders[1].feedback.residual, before.residual)
    client.close()


def test_a_refused_upload_of_another_layout_is_dropped_not_returned(tmp_path: Path) -> None:
    # Prepare: an upload of task 1 in layout SPEC is pending (an earlier run's), then the task's
    # model is OTHER in this process
    client = _client(tmp_path, _accept)
    pending = client._core.encode(_task(1, 5), SPEC, np.zeros(SPEC.size, np.float32), DELTA[1], 8)
    client.close()
    client = _client(tmp_path, _accept)
    client._core.encoder(_task(1, 6, OTHER), OTHER)
    held = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert held is not None

    # Execute: the coordinator refuses the old upload for good
    client._core.settle_upload(pending, None, refused=True)

    # Assert: dropped, the residual untouched; before, its SPEC content went into it
    assert DeviceStore(tmp_path).load_pending() is None
    after = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert after is not None
    np.testing.assert_array_equal(after.residual, held.residual)
    client.close()


def test_a_secure_participant_of_another_layout_starts_afresh(tmp_path: Path) -> None:
    # Prepare: task 1's secure participant of layout SPEC holds a residual, saved
    client = _client(tmp_path, _accept)
    part = client._core.secure_participant(SPEC.size, 1, SPEC)
    part.residual = np.full(SPEC.size, 0.5, np.float32)
    client._core.save_secure_residual(part, 1)

    # Execute: task 1's secure round of layout OTHER takes its participant
    again = client._core.secure_participant(OTHER.size, 1, OTHER)
    same = client._core.secure_participant(OTHER.size, 1, OTHER)

    # Assert: it starts from no residual (SPEC's is not OTHER's), and keeps its own afterwards;
    # the app directory's residual is OTHER's too, so a participant read again from it (this
    # one dropped from memory before its round saved) does not take SPEC's
    assert not np.any(again.residual)
    assert same is again
    held = DeviceStore(tmp_path).load_residual(OTHER.size, 1)
    assert held is not None and not np.any(held.residual)
    client._core._participants.clear()
    assert not np.any(client._core.secure_participant(OTHER.size, 1, OTHER).residual)
    client.close()
