"""A coordinator restored from a backup hands out round ids again (they continue from the
backup's): an accepted upload to such a round must not replace the record of the device's
earlier upload to the old round of that id, whose content the restored coordinator no longer
holds (it would answer `unknown` for it, had the id not been reused)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compression import CodecConfig, UpdateCodec
from sdk.device_store import AcceptedUpload, DeviceStore

from .test_client import SPEC
from .test_h51_task_residuals import DELTA, _accept, _client, _decoded, _task


def test_an_upload_accepted_to_a_reused_round_id_returns_the_older_record_first(
    tmp_path: Path,
) -> None:
    # Prepare: a record of the device's upload to round 7 of task 1 (before the restore)
    old = np.linspace(-1, 1, SPEC.size).astype(np.float32)
    frame, _ = UpdateCodec(SPEC, CodecConfig.dense()).encode(
        old, np.random.default_rng(0), weight=1.0
    )
    DeviceStore(tmp_path).save_accepted(AcceptedUpload(7, frame, SPEC, 1))
    client = _client(tmp_path, _accept)
    params = np.zeros(SPEC.size, np.float32)

    # Execute: the restored coordinator's round 7 of task 1 takes a new upload
    pending = client._core.encode(_task(1, 7), SPEC, params, params + DELTA[1], 8)
    before = client._core._encoders[1].feedback.residual.copy()
    client.upload(pending, SPEC)
    after = client._core._encoders[1].feedback.residual.copy()
    client.close()

    # Assert: the new upload is the record of round 7, and the older one's content is back in
    # task 1's residual, in memory and in the app directory (before, it was replaced: lost)
    record = DeviceStore(tmp_path).load_accepted(7)
    assert record is not None and record.frame == pending.frame
    np.testing.assert_allclose(after, before + old, atol=1e-6)
    stored = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert stored is not None
    np.testing.assert_allclose(stored.residual, before + old, atol=1e-6)


def test_a_secure_input_kept_for_a_reused_round_id_returns_the_older_record_and_keeps_its_own(
    tmp_path: Path,
) -> None:
    # Prepare: a record of task 1's round 7 from before the restore; then task 1's secure
    # round 7 took a masked input: the participant holds this round's residual (not saved yet)
    # and what the input stood for
    old = np.linspace(-1, 1, SPEC.size).astype(np.float32)
    frame, _ = UpdateCodec(SPEC, CodecConfig.dense()).encode(
        old, np.random.default_rng(0), weight=1.0
    )
    store = DeviceStore(tmp_path)
    store.save_accepted(AcceptedUpload(7, frame, SPEC, 1))
    client = _client(tmp_path, _accept)
    part = client._core.secure_participant(SPEC.size, 1)
    part.residual = np.full(SPEC.size, 0.5, np.float32)
    sent = np.zeros(SPEC.size, np.float32)
    sent[:4] = 2.0
    part.unsettled = (np.arange(4, dtype=np.int64), sent[:4].copy())

    # Execute
    client._core.keep_secure_input(7, SPEC, part, 1)

    # Assert: the record of round 7 is the new input's; task 1's residual is this round's plus
    # the older record's content, stored and in memory
    record = DeviceStore(tmp_path).load_accepted(7)
    assert record is not None
    np.testing.assert_array_equal(_decoded(record.frame), sent)
    want = np.full(SPEC.size, 0.5, np.float32) + old
    np.testing.assert_allclose(part.residual, want, atol=1e-6)
    stored = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert stored is not None
    np.testing.assert_allclose(stored.residual, want, atol=1e-6)
    client.close()
