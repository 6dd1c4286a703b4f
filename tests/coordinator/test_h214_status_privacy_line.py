"""`plume coordinator status` (every task, a line each) also prints the coordinator-wide
epsilon of GET /healthz's `dp_all_tasks` (docs/privacy.md item 7) as one line on stderr, once
some task is DP-accounted; stdout stays one JSON line a task. Before, it showed no composed
figure at all. A coordinator that predates the field, or whose /healthz does not answer, gets
the task lines alone."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from coordinator.cli import main
from coordinator.service import ServerThread, ServiceConfig, Store, create_app

from .test_service_aggregator_state import _one_round
from .test_service_support import ADMIN, create_task, task_config

DP_1 = "dp:clip=1,z=1,population=2,sample=2,delta=1e-5+fedavg"
DP_2 = "dp:clip=1,z=2,population=2,sample=2,delta=1e-6+fedavg"


def _status(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = main(["coordinator", "status", "--url", url, "--admin-token", ADMIN])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def _service(db: Path) -> ServerThread:
    return ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02))


def test_status_prints_the_composed_epsilon_once_a_task_is_dp_accounted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a real coordinator with a plain task only, then two dp tasks besides
    with _service(tmp_path / "plume.db") as url:
        with httpx.Client(base_url=url) as http:
            create_task(http, task_config(rounds=2, aggregator="fedavg"))
            # Execute: status with no accounted task, with two before any round, after a round
            plain = _status(url, capsys)
            t1 = create_task(http, task_config(rounds=2, aggregator=DP_1))
            create_task(http, task_config(rounds=2, aggregator=DP_2))
            fresh = _status(url, capsys)
            _one_round(url, tmp_path, t1, 1)
            spent = _status(url, capsys)
            health = http.get("/healthz").json()["dp_all_tasks"]

    # Assert: stdout is the task lines, JSON each, in every case
    for code, lines, _ in (plain, fresh, spent):
        assert code == 0
        assert all(isinstance(json.loads(line), dict) for line in lines)
    assert len(plain[1]) == 1 and len(fresh[1]) == 3 and len(spent[1]) == 3
    # no accounted task: no line; then the figure /healthz gives, on stderr
    assert plain[2] == ""
    assert fresh[2] == (
        "privacy across tasks: epsilon = 0 (no round released yet), composed over 2 of 3 "
        "tasks (a device in every DP-accounted task; reported, not enforced)\n"
    )
    assert health["epsilon"] > 0 and health["delta"] == 1e-5
    assert spent[2] == (
        f"privacy across tasks: epsilon = {health['epsilon']:.3g} at delta = 1e-05, composed "
        "over 2 of 3 tasks (a device in every DP-accounted task; reported, not enforced)\n"
    )


def test_a_coordinator_without_the_field_gets_the_task_lines_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a coordinator whose /healthz answers as one before dp_all_tasks, with a dp task
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    store = Store(cfg.db_path)
    app = create_app(cfg, store=store)

    async def older_healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "journal_mode": "wal", "tasks": 1, "tasks_refused": 0})

    app.router.routes.insert(0, Route("/healthz", older_healthz))
    try:
        with ServerThread(cfg, app=app) as url:
            with httpx.Client(base_url=url) as http:
                create_task(http, task_config(rounds=2, aggregator=DP_1))
                assert "dp_all_tasks" not in http.get("/healthz").json()
            # Execute
            code, lines, err = _status(url, capsys)
    finally:
        store.close()
    # Assert: the task's line, nothing else, exit 0
    assert code == 0 and len(lines) == 1 and json.loads(lines[0])["task_id"] == 1
    assert err == ""
