"""Two things docs/operations.md now says, checked against a real loopback coordinator (an
operator's walkthrough, s53e):

- "Changing the admin token": the token is not stored in the database, so a restart with a new
  one refuses the old one (403 bad_admin_token, the CLI's line as the docs quote it, a count in
  `plume_auth_failures_total{reason="bad_admin_token"}`), and the tasks carry on.
- `plume_control_wire_bytes_total` counts the scrapes of `/metrics` too: before, the docs listed
  "registration, idle check-ins, admin requests, refusals", and an operator watching the counter
  on an idle coordinator saw it grow by each scrape's answer with no device about."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from coordinator.service.admin_client import AdminError

from .test_service_support import create_task

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
OLD, NEW = "the-old-admin-token-123", "the-new-admin-token-456"


def _value(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert m is not None, f"{series} not in /metrics"
    return float(m.group(1))


def _documented_refusal() -> str:
    """The error line the docs' "Changing the admin token" block quotes, joined."""
    section = DOC.read_text().split("### Changing the admin token", 1)[1].split("\n### ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return " ".join(line.removeprefix("# ") for line in block.splitlines() if line.startswith("# "))


def test_a_restart_with_a_new_admin_token_refuses_the_old_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a task made under the old token
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    db = tmp_path / "plume.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token="test-admin-token")) as url:
        task = create_task(url)
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=OLD)) as url:
        assert [t.task_id for t in AdminClient(url, OLD).tasks()] == [task]
    # The token is a setting, not a row: no file of the database holds it
    for path in tmp_path.iterdir():
        assert OLD.encode() not in path.read_bytes(), path.name
    # Execute: restarted with the new token
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=NEW)) as url:
        with pytest.raises(AdminError) as refused:
            AdminClient(url, OLD).tasks()
        code = main(["coordinator", "status", "--url", url, "--admin-token", OLD, "--task", "1"])
        err = capsys.readouterr().err.strip()
        metrics = httpx.get(f"{url}/metrics").text
        tasks = AdminClient(url, NEW).tasks()
    # Assert: refused, as the docs say, counted, and the task is still there
    assert refused.value.status == 403 and "bad_admin_token" in refused.value.body
    assert code == 1
    assert err == _documented_refusal()
    assert _value(metrics, 'plume_auth_failures_total{reason="bad_admin_token"}') == 2
    assert [t.task_id for t in tasks] == [task]


def test_each_scrape_of_metrics_counts_in_the_control_wire_bytes(tmp_path: Path) -> None:
    # Prepare: an idle coordinator (no device, no task)
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token="t")
    down = 'plume_control_wire_bytes_total{direction="down"}'
    by_route = 'plume_control_wire_bytes_by_route_total{direction="down",route="/metrics"}'
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        # Execute: three scrapes, nothing else
        first = http.get("/metrics")
        second = http.get("/metrics")
        third = http.get("/metrics")
    # Assert: each scrape's answer is in the counter by the next scrape
    grew = _value(third.text, down) - _value(second.text, down)
    assert grew >= len(second.content) > 0
    assert _value(third.text, by_route) >= len(first.content) + len(second.content)
    assert "the probes and scrapes themselves" in DOC.read_text()


def test_a_stopped_task_still_counts_in_the_dp_task_gauges(tmp_path: Path) -> None:
    # The docs' table said "running tasks"; a stopped (or done) task stays in the figure,
    # as docs/privacy.md says, and the table now says so.
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token="test-admin-token")
    gauge = "plume_dp_tasks_not_accounted"
    with ServerThread(cfg) as url:
        task = create_task(url)  # FedAvg: no DP accounting
        before = _value(httpx.get(f"{url}/metrics").text, gauge)
        assert AdminClient(url, "test-admin-token").stop(task).state == "stopped"
        after = _value(httpx.get(f"{url}/metrics").text, gauge)
    assert before == after == 1
    assert "done and stopped ones included" in DOC.read_text()
