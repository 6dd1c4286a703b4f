"""Setting a task's initial model is all or nothing: the task's runtime is built (and checked)
before the store marks it active, so a build that fails leaves the task awaiting its model,
with nothing in memory, a clear error, and a later upload of the model accepted."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from compression import encode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service import rounds as rounds_module
from coordinator.service.errors import ApiError
from protocol.messages import to_json

from .test_restart_midround import Clock, _start
from .test_restart_store_failures import FailingCommit
from .test_service_support import ADMIN, SPEC, initial_params, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}


class _RefusingEngine:
    """A round engine that cannot be built for this model (the injected build failure)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        raise ValueError("injected: the engine refuses this model")


def test_a_build_failure_leaves_the_task_awaiting_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a task awaiting its model; building its round engine fails
    coord = _start(tmp_path / "plume.db", Clock())
    task_id = coord.create_task(task_config())
    snapshot = encode_snapshot(initial_params(), SPEC, "fp32")
    monkeypatch.setattr(rounds_module, "RoundEngine", _RefusingEngine)
    # Execute
    with pytest.raises(ApiError) as refused:
        coord.set_initial_model(task_id, snapshot)
    stored = coord.store.task(task_id)
    versions = coord.store.chain(task_id, -1)
    monkeypatch.undo()
    accepted = coord.set_initial_model(task_id, snapshot)  # the fixed build takes it
    # Assert: a 422 naming the failure; nothing changed in the store or in memory
    assert refused.value.status == 422 and refused.value.reason == "validation"
    assert "injected: the engine refuses this model" in refused.value.detail
    assert stored is not None and stored.state == "awaiting_model" and stored.version == -1
    assert versions == []
    assert accepted.state == "active" and accepted.version == 0
    assert task_id in coord.runtimes


def test_a_build_failure_then_a_restart_finds_the_task_awaiting_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    clock = Clock()
    coord = _start(tmp_path / "plume.db", clock)
    task_id = coord.create_task(task_config())
    monkeypatch.setattr(rounds_module, "RoundEngine", _RefusingEngine)
    with pytest.raises(ApiError):
        coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    monkeypatch.undo()
    # Execute: the coordinator starts again on the same store
    again = _start(tmp_path / "plume.db", clock)
    # Assert: not run, not refused: still waiting for its model
    assert task_id not in again.runtimes and task_id not in again.refused
    assert again.task_status(task_id).state == "awaiting_model"


def test_a_refused_store_write_leaves_nothing_in_memory(tmp_path: Path) -> None:
    # Prepare: the runtime builds, then the COMMIT that marks the task active is refused
    coord = _start(tmp_path / "plume.db", Clock())
    task_id = coord.create_task(task_config())
    snapshot = encode_snapshot(initial_params(), SPEC, "fp32")
    real = coord.store._db
    coord.store._db = FailingCommit(real, 1)  # type: ignore[assignment]
    # Execute
    with pytest.raises(sqlite3.OperationalError):
        coord.set_initial_model(task_id, snapshot)
    in_memory = task_id in coord.runtimes
    status = coord.task_status(task_id)
    accepted = coord.set_initial_model(task_id, snapshot)
    # Assert: no runtime for a task the store does not call active; the retry is taken
    assert not in_memory
    assert status.state == "awaiting_model"
    assert accepted.state == "active" and task_id in coord.runtimes


def test_the_http_answer_to_a_build_failure_is_a_422_and_the_retry_a_200(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    server = ServerThread(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    snapshot = encode_snapshot(initial_params(), SPEC, "fp32")
    octet = {**AUTH, "content-type": "application/octet-stream"}
    # Execute
    with server as url, httpx.Client(base_url=url) as http:
        task_id = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH).json()[
            "task_id"
        ]
        monkeypatch.setattr(rounds_module, "RoundEngine", _RefusingEngine)
        refused = http.put(f"/v1/admin/tasks/{task_id}/model", content=snapshot, headers=octet)
        between = http.get(f"/v1/admin/tasks/{task_id}", headers=AUTH).json()
        monkeypatch.undo()
        accepted = http.put(f"/v1/admin/tasks/{task_id}/model", content=snapshot, headers=octet)
    # Assert
    assert refused.status_code == 422, refused.text
    assert refused.json()["reason"] == "validation"
    assert "cannot run with this model" in refused.json()["detail"]
    assert between["state"] == "awaiting_model"
    assert accepted.status_code == 200 and accepted.json()["state"] == "active"


def test_the_runtime_built_before_the_write_is_the_one_a_restart_builds(tmp_path: Path) -> None:
    # Prepare
    clock = Clock()
    coord = _start(tmp_path / "plume.db", clock)
    task_id = coord.create_task(task_config())
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    # Execute: what the store holds, built as a start builds it
    built = coord.runtimes[task_id]
    rebuilt = _start(tmp_path / "plume.db", clock).runtimes[task_id]
    # Assert
    assert (built.state, built.version, built.digest, built.seq) == (
        rebuilt.state,
        rebuilt.version,
        rebuilt.digest,
        rebuilt.seq,
    )
    assert built.published.tobytes() == rebuilt.published.tobytes()
    assert built.engine.params.tobytes() == rebuilt.engine.params.tobytes()
    assert built.strategy.feedback.to_bytes() == rebuilt.strategy.feedback.to_bytes()
    assert built.engine.aggregator_state == rebuilt.engine.aggregator_state
