"""docs/http-api.md's 409 `round_closed` for a secure round's stage requests once the round is
over (helper-57d's audit): after the round commits, a stage upload and a stage download are
409 `round_closed` with `detail` "secure round N is committed" (the doc named only "is
abandoned" and "is closing"), and neither changes the round or the published model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coordinator.service import ServerThread, ServiceConfig

from .test_service_secure_security import World, _signed
from .test_service_support import ADMIN, SPEC, admin_get, wait_until


@pytest.fixture()
def committed(tmp_path: Path) -> Iterator[World]:
    """The security tests' secure round, run to its commit by its three devices."""
    root = tmp_path
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02)
    with ServerThread(cfg) as url:
        w = World(url, root)
        try:
            update = np.full(SPEC.size, 0.01, np.float32)
            threads = [
                threading.Thread(
                    target=c.secure_round,
                    args=(w.assignments[c.device_id], lambda params: (update, 1, 0.0)),
                )
                for c in w.clients
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            wait_until(w.http, f"/v1/admin/tasks/{w.task_id}", "version", 1)
            yield w
        finally:
            w.close()


def test_stage_requests_of_a_committed_secure_round_are_409_round_closed(
    committed: World,
) -> None:
    # Prepare
    w = committed
    before = admin_get(w.http, f"/v1/rounds/{w.round_id}")
    task = admin_get(w.http, f"/v1/admin/tasks/{w.task_id}")
    target = w.path("masked-input")
    # Execute
    upload = w.post("advertise-keys", w.valid_advertise())
    download = w.http.get(target, headers=_signed(w.key_a, "GET", target, w.round_id, b""))
    # Assert
    for r in (upload, download):
        assert r.status_code == 409, r.text
        assert r.json() == {
            "reason": "round_closed",
            "detail": f"secure round {w.round_id} is committed",
        }
    assert before["state"] == "committed"
    assert admin_get(w.http, f"/v1/rounds/{w.round_id}") == before
    assert admin_get(w.http, f"/v1/admin/tasks/{w.task_id}") == task
