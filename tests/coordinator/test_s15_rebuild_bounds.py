"""An older version's rebuild (`GET /v1/admin/tasks/{id}/model?version=N`) reads its delta
frames in pages bounded in bytes as well as in count, and runs one at a time: each decodes up
to 1,024 frames in the executor round closes share (helper-100's review of fc9e488)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import DecodeLimits, decode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service import app as app_module
from coordinator.service.store import Store

from .test_h79_admin_model import World, _history
from .test_service_support import ADMIN, SPEC

AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        yield World(url, tmp_path, http)


def test_the_frames_are_read_in_pages_bounded_in_bytes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: room for two of the largest legal frames a page; every chain read recorded
    task_id, held = _history(world, 5)
    monkeypatch.setattr(app_module, "_REBUILD_BYTES", 2 * DecodeLimits().frame_cap(SPEC) + 1)
    spans: list[tuple[int, int]] = []
    chain = Store.chain

    def recording(self: Store, task: int, base: int, version: int) -> Any:
        spans.append((base, version))
        return chain(self, task, base, version)

    monkeypatch.setattr(Store, "chain", recording)
    # Execute
    r = world.http.get(f"/v1/admin/tasks/{task_id}/model", params={"version": 4}, headers=AUTH)
    # Assert: the right model, from pages of at most two frames covering 0..4
    assert r.status_code == 200, r.text
    assert np.array_equal(decode_snapshot(r.content, SPEC), held[4])
    assert spans == [(0, 2), (2, 4)]


def test_rebuilds_run_one_at_a_time(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a rebuild that records how many run at once and lasts long enough to overlap
    task_id, held = _history(world, 3)
    rebuild = app_module._older_version
    running, most = [0], [0]
    lock = threading.Lock()

    def slow(*args: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        try:
            return rebuild(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(app_module, "_older_version", slow)
    answers: dict[int, httpx.Response] = {}

    def get(v: int) -> None:
        with httpx.Client(base_url=world.url) as http:
            answers[v] = http.get(
                f"/v1/admin/tasks/{task_id}/model", params={"version": v}, headers=AUTH
            )

    # Execute: three older versions asked for at once
    threads = [threading.Thread(target=get, args=(v,)) for v in (0, 1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # Assert: all answered, never two rebuilding together
    for v in (0, 1, 2):
        assert answers[v].status_code == 200, answers[v].text
        assert np.array_equal(decode_snapshot(answers[v].content, SPEC), held[v])
    assert most[0] == 1
