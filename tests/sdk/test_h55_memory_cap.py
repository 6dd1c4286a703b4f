"""The client's in-memory per-task state (an update encoder per task, a SecAgg+ participant per
task and model size) is capped like the app directory's task residuals (MAX_RESIDUALS), least
recently used out; a task dropped from memory reads its residual from the app directory at its
next use. Before, both grew by one entry per task ever seen, each holding a float32[d]
residual, for the life of the process. Also: a task's encoder and its secure participant are
never both held, so a plain round after a secure one (or the reverse) starts from the residual
the other left, not from a stale copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compression import ErrorFeedback
from sdk.device_store import MAX_RESIDUALS, DeviceStore

from .test_client import SPEC
from .test_h51_task_residuals import _accept, _client, _decoded, _run, _task

TASKS = range(1, MAX_RESIDUALS + 5)


def _delta(task: int, round_id: int) -> np.ndarray:
    return np.random.default_rng([task, round_id]).standard_normal(SPEC.size).astype(np.float32)


def test_encoders_are_capped_least_recently_used_first(tmp_path: Path) -> None:
    # Prepare / Execute: one plain round in each of 12 tasks
    client = _client(tmp_path, _accept)
    for t in TASKS:
        _run(client, _task(t, 100 + t), _delta(t, 100 + t))

    # Assert: memory holds the encoders of the 8 tasks used last, in order of use
    assert list(client._core._encoders) == list(TASKS)[-MAX_RESIDUALS:]
    client.close()


def test_a_task_dropped_from_memory_reads_its_residual_from_the_app_directory(
    tmp_path: Path,
) -> None:
    # Prepare: rounds in tasks 1..8 (the app directory holds their 8 residuals), then task 9's
    # encoder is used without a round saved (its round failed before its upload was encoded):
    # task 1 leaves memory, not the app directory
    client = _client(tmp_path, _accept)
    for t in range(1, MAX_RESIDUALS + 1):
        _run(client, _task(t, 100 + t), _delta(t, 100 + t))
    client._core.encoder(_task(MAX_RESIDUALS + 1, 200), SPEC)
    assert 1 not in client._core._encoders and len(client._core._encoders) == MAX_RESIDUALS
    held = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert held is not None and np.any(held.residual)
    before = held.residual.copy()

    # Execute: task 1's next round
    frame = _run(client, _task(1, 300), _delta(1, 300))

    # Assert: it sends its delta and the residual it held, nothing lost: what it sent and what
    # it keeps add up to both
    after = client._core._encoders[1].feedback.residual
    np.testing.assert_allclose(_decoded(frame) + after, _delta(1, 300) + before, atol=1e-5)
    assert len(client._core._encoders) == MAX_RESIDUALS and 2 not in client._core._encoders
    client.close()


def test_secure_participants_are_capped_and_read_again_from_the_app_directory(
    tmp_path: Path,
) -> None:
    # Prepare: task 1 holds a residual in the app directory
    client = _client(tmp_path, _accept)
    ef = ErrorFeedback(SPEC.size)
    ef.residual = _delta(1, 0)
    DeviceStore(tmp_path).save_residual(ef, 1)
    first = client._core.secure_participant(SPEC.size, 1)

    # Execute: participants of 11 more tasks, then task 1's again
    for t in list(TASKS)[1:]:
        client._core.secure_participant(SPEC.size, t)
    held = list(client._core._participants)
    again = client._core.secure_participant(SPEC.size, 1)

    # Assert: memory held the 8 used last; task 1's participant, dropped, was read again from
    # the app directory (a new object with the stored residual)
    assert held == [(t, SPEC.size) for t in list(TASKS)[-MAX_RESIDUALS:]]
    assert len(client._core._participants) == MAX_RESIDUALS
    assert again is not first
    np.testing.assert_array_equal(again.residual, _delta(1, 0))
    client.close()


def test_plain_and_secure_rounds_of_a_task_share_the_residual_in_memory(tmp_path: Path) -> None:
    # Prepare: a plain round of task 1 (its encoder holds the residual it left), then a secure
    # round's participant of task 1 takes the residual and leaves another (saved, as
    # `keep_secure_input` does)
    client = _client(tmp_path, _accept)
    _run(client, _task(1, 5), _delta(1, 5))
    part = client._core.secure_participant(SPEC.size, 1)
    part.residual = (part.residual * 0.5).astype(np.float32)  # half of it sent
    client._core.save_secure_residual(part, 1)
    after_secure = part.residual.copy()

    # Execute: a plain round of task 1, then the participant again
    frame = _run(client, _task(1, 7), _delta(1, 7))
    kept = client._core._encoders[1].feedback.residual.copy()
    after_plain = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    again = client._core.secure_participant(SPEC.size, 1)

    # Assert: the plain round started from the residual the secure round left (before, from
    # the one its encoder kept in memory, whose other half the masked input had carried: sent
    # twice), and the participant holds what the plain round left (before, its stale copy)
    np.testing.assert_allclose(_decoded(frame) + kept, _delta(1, 7) + after_secure, atol=1e-5)
    assert after_plain is not None
    np.testing.assert_array_equal(again.residual, after_plain.residual)
    client.close()
