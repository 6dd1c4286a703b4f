"""The coordinator-wide epsilon (dp_total, e56ecd4) must not stall or break the routes that
show it, and must say when tasks are missing from it (helper-215's review):

- B1: /healthz and /metrics computed it on the event loop, and with more task configs than
  `_round_rdp`'s cache held (64), every change recomputed every curve (about 0.25 s each: 17 s
  for 70 configs). Now the cache holds 1,024 configs and the routes compute it in a worker
  thread first; an error in it leaves /healthz answering (liveness) and /metrics with every
  other metric.
- B3: a refused or unloaded task's released rounds are not in the figure, which read like
  "nothing spent". Now `dp_all_tasks` lists them (`not_running`) and says `partial`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

import coordinator.service.dp_total as dp_total
from coordinator.privacy import _round_rdp
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.dp_total import all_tasks_privacy

from .test_h213_dp_all_tasks import _runtime  # a stand-in task
from .test_h214_status_privacy_line import _status
from .test_service_support import ADMIN, create_task, rewrite_stored_config, task_config


def _service(db: Path) -> ServerThread:
    return ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02))


def test_the_curve_cache_holds_many_task_configs() -> None:
    maxsize = _round_rdp.cache_info().maxsize
    assert maxsize is not None and maxsize >= 1024


@pytest.mark.slow
def test_one_more_round_with_70_task_configs_recomputes_no_curve() -> None:
    # Prepare: 70 accounted tasks of distinct configs, their figure computed once (cold)
    rts = [
        _runtime(i, f"dp:clip=1,z={1 + i / 1000:g},population=40,sample=4,delta=1e-6+fedavg", 3)
        for i in range(1, 71)
    ]
    all_tasks_privacy(rts)
    misses = _round_rdp.cache_info().misses
    # Execute: one task released one more round
    rts[0] = _runtime(1, rts[0].config.aggregator, 4)
    all_tasks_privacy(rts)
    # Assert: every curve came from the cache (before: 64 entries, so all 70 were computed again)
    assert _round_rdp.cache_info().misses == misses


def test_healthz_and_metrics_answer_when_the_figure_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a coordinator with a dp task, and a composition that raises
    def broken(rts: Any) -> Any:
        raise RuntimeError("no figure")

    monkeypatch.setattr(dp_total, "_compute", broken)
    with _service(tmp_path / "plume.db") as url:
        with httpx.Client(base_url=url) as http:
            create_task(http, task_config(aggregator="dp:clip=1,z=1,population=4,sample=2+fedavg"))
            # Execute
            health = http.get("/healthz")
            scrape = http.get("/metrics")
    # Assert: liveness and the other metrics stay; the figure says it is missing
    assert health.status_code == 200 and health.json()["ok"] is True
    assert "error" in health.json()["dp_all_tasks"]
    assert scrape.status_code == 200
    assert "plume_check_ins_total" in scrape.text or "plume_rounds" in scrape.text
    assert "\nplume_dp_epsilon_all_tasks " not in scrape.text


def test_a_refused_task_is_named_and_the_figure_says_it_is_partial(tmp_path: Path) -> None:
    # Prepare: two tasks; the second's stored aggregator made unbuildable, then a restart
    db = tmp_path / "plume.db"
    with _service(db) as url:
        with httpx.Client(base_url=url) as http:
            kept = create_task(
                http, task_config(aggregator="dp:clip=1,z=1,population=4,sample=2+fedavg")
            )
            lost = create_task(
                http, task_config(aggregator="dp:clip=1,z=2,population=4,sample=2+fedavg")
            )
            before = http.get("/healthz").json()["dp_all_tasks"]
    rewrite_stored_config(db, lost, aggregator="no-such-aggregator")
    # Execute
    with _service(db) as url:
        health = httpx.get(f"{url}/healthz").json()
    # Assert
    assert before["not_running"] == [] and before["partial"] is False
    assert health["tasks_refused"] == 1
    dp = health["dp_all_tasks"]
    assert dp["composed"] == [kept] and dp["not_running"] == [lost] and dp["partial"] is True


def test_status_says_when_a_refused_task_is_missing_from_the_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: two dp tasks; the second's stored aggregator made unbuildable, then a restart
    db = tmp_path / "plume.db"
    with _service(db) as url:
        with httpx.Client(base_url=url) as http:
            create_task(http, task_config(aggregator="dp:clip=1,z=1,population=4,sample=2+fedavg"))
            lost = create_task(
                http, task_config(aggregator="dp:clip=1,z=2,population=4,sample=2+fedavg")
            )
    rewrite_stored_config(db, lost, aggregator="no-such-aggregator")
    with _service(db) as url:
        # Execute
        code, _, err = _status(url, capsys)
    # Assert: the line names the task left out
    assert code == 0
    line = next(x for x in err.splitlines() if x.startswith("privacy across tasks:"))
    assert f"task {lost} not running, not in it" in line and "at least that" in line
