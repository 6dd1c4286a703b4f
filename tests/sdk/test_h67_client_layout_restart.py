"""The client passes its model's layout to the device store, so a round after a restart of a
task whose model became OTHER (same size, another layout) starts from no residual (helper-67's
test; all three failed before the client passed the layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compression import ModelSpec
from sdk.device_store import DeviceStore

from .test_client import SPEC
from .test_h51_task_residuals import DELTA, _accept, _client, _decoded, _run, _task

OTHER = ModelSpec.from_shapes([("w", (8, 4)), ("b", (4,))])


def test_a_round_of_another_layout_after_a_restart_does_not_send_the_old_residual(
    tmp_path: Path,
) -> None:
    # Prepare: a round of task 1 in SPEC leaves a residual; the app restarts
    client = _client(tmp_path, _accept)
    _run(client, _task(1, 5), DELTA[1])
    assert np.any(client._core._encoders[1].feedback.residual)
    client.close()
    client = _client(tmp_path, _accept)

    # Execute: task 1's next round is of OTHER (same size, another layout)
    frame = _run(client, _task(1, 6, OTHER), DELTA[2], OTHER)

    # Assert: it sent its delta only; before, SPEC's residual was added to OTHER's coordinates
    kept = client._core._encoders[1].feedback.residual
    np.testing.assert_allclose(_decoded(frame, OTHER) + kept, DELTA[2], atol=1e-5)
    client.close()


def test_a_secure_participant_of_another_layout_after_a_restart_starts_afresh(
    tmp_path: Path,
) -> None:
    client = _client(tmp_path, _accept)
    part = client._core.secure_participant(SPEC.size, 1, SPEC)
    part.residual = np.full(SPEC.size, 0.5, np.float32)
    client._core.save_secure_residual(part, 1, SPEC)
    client.close()
    client = _client(tmp_path, _accept)
    assert not np.any(client._core.secure_participant(OTHER.size, 1, OTHER).residual)
    # the same layout still takes it
    client.close()
    client = _client(tmp_path, _accept)
    assert np.all(client._core.secure_participant(SPEC.size, 1, SPEC).residual == 0.5)
    client.close()


def test_the_zero_residual_of_a_layout_change_names_the_new_layout(tmp_path: Path) -> None:
    # Prepare: a round of SPEC, then (same process) OTHER's encoder: its zero residual is saved
    client = _client(tmp_path, _accept)
    _run(client, _task(1, 5), DELTA[1])
    client._core.encoder(_task(1, 6, OTHER), OTHER)
    client.close()
    store = DeviceStore(tmp_path)
    assert store.load_residual(SPEC.size, 1, SPEC) is None
    held = store.load_residual(OTHER.size, 1, OTHER)
    assert held is not None and not np.any(held.residual)
