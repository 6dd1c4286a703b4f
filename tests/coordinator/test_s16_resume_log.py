"""A restart that resumes an open round says so in the log, with its accepted updates."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from .test_restart_midround import Clock, _frame, _open_round, _start
from .test_service_support import task_config


def test_a_resumed_round_is_logged_with_its_accepted_updates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: one of two uploads accepted, then the coordinator is dropped (as if killed)
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    clock = Clock()
    first = _start(tmp_path / "plume.db", clock)
    task_id, round_id = _open_round(first, cfg)
    first.submit(round_id, "a", "key-a", _frame(cfg, 0))
    caplog.set_level(logging.INFO, logger="plume.coordinator")

    # Execute
    _start(tmp_path / "plume.db", clock)

    # Assert
    assert f"task {task_id} round {round_id} resumed from the store with 1 accepted updates" in [
        r.getMessage() for r in caplog.records
    ]
