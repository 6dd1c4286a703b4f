"""`AdminClient.model(task, N)` past the export cap asks for version `EXPORT_REACH` and then
the chain; when that version cannot be rebuilt either, the error is its reason, not the cap's
"ask for version REACH" (helper-100's review of fc9e488)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import numpy as np
import pytest

from coordinator.service import AdminClient, AdminError, ServerThread, ServiceConfig, admin_client
from coordinator.service import rounds as rounds_module

from .test_h79_admin_model import World, _history
from .test_service_support import ADMIN, initial_params


def test_past_the_cap_a_damaged_initial_model_is_named_not_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the cap lowered to 2 on both sides; four versions; the stored initial model
    # no longer version 0's
    monkeypatch.setattr(rounds_module, "MAX_EXPORT_CHAIN", 2)
    monkeypatch.setattr(admin_client, "EXPORT_REACH", 2)
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    with (
        ServerThread(cfg) as url,
        httpx.Client(base_url=url) as http,
    ):
        world = World(url, tmp_path, http)
        task_id, _ = _history(world, 4)
        wrong = (initial_params() + np.float32(1e-3)).astype("<f4").tobytes()
        con = sqlite3.connect(tmp_path / "plume.db")
        con.execute("UPDATE versions SET params=? WHERE task_id=? AND version=0", (wrong, task_id))
        con.commit()
        con.close()
        # Execute
        with AdminClient(url, ADMIN) as admin, pytest.raises(AdminError) as raised:
            admin.model(task_id, 3)
    # Assert: the damage is named; the cap's advice (ask for version 2) is not repeated
    assert raised.value.status == 410
    assert "initial model" in raised.value.body and "version 0's digest" in raised.value.body
    assert "?version=2" not in raised.value.body


def test_only_the_caps_own_answer_counts_as_the_cap() -> None:
    # The cap's answer (app.py) against a pre-schema-4 task's answer for version 10240, whose
    # text holds "?version=10240": not the cap's (helper-105's review of 293b44d)
    cap = AdminError(
        "GET", "/m", 410,
        '{"reason":"version_gone","detail":"version 2000 of task 1 is 2000 versions from its '
        'initial model, and one export rebuilds at most 1024: ask for version 1024 '
        '(?version=1024) and apply to it the delta chain ?version=2000&base=1024"}',
    )  # fmt: skip
    own = AdminError(
        "GET", "/m", 410,
        '{"reason":"version_gone","detail":"... rebuild it from your copy of the initial '
        'model with the delta chain ?version=10240&base=0 (plume coordinator get-model '
        '--version 10240)"}',
    )  # fmt: skip
    assert admin_client._only_the_cap(cap, 1024)
    assert not admin_client._only_the_cap(own, 1024)
