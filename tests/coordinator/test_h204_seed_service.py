"""The coordinator service refuses a new task whose dp stage has a fixed noise seed= and
accounts epsilon (helper-193's F4; needs helper-204's rounds_f4.patch). It took one with a log
warning only, though its epsilon then means nothing. `ServiceConfig.allow_seeded_dp` (off by
default, no serve flag) is the sanctioned escape for simulations: the HTTP simulator's own
in-process coordinator sets it."""

from __future__ import annotations

from pathlib import Path

import httpx

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import to_json

from .test_service_support import ADMIN, create_task, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
SEEDED = "dp:clip=1,z=1,population=10,sample=2,seed=3+fedavg"


def test_a_seeded_accounted_dp_task_is_refused_by_default(tmp_path: Path) -> None:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        refused = http.post(
            "/v1/admin/tasks", json=to_json(task_config(aggregator=SEEDED)), headers=AUTH
        )
        unaccounted = create_task(http, task_config(aggregator="dp:clip=1,z=1,seed=3+fedavg"))
        unseeded = create_task(http, task_config(aggregator=SEEDED.replace(",seed=3", "")))
        tasks = http.get("/v1/admin/tasks", headers=AUTH).json()
    assert refused.status_code == 422 and refused.json()["reason"] == "validation"
    detail = refused.json()["detail"]
    assert "seed=3 with accounting (population=10,sample=2)" in detail
    assert "means nothing" in detail and "drop seed=" in detail
    assert (unaccounted, unseeded) == (1, 2) and len(tasks) == 2  # nothing stored for it


def test_a_service_that_allows_it_takes_it_with_the_warning(tmp_path: Path) -> None:
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, allow_seeded_dp=True
    )
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        assert create_task(http, task_config(aggregator=SEEDED)) == 1
