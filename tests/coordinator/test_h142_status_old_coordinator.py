"""`plume coordinator status --task N --last/--before` against a coordinator that predates the
parameters (it ignores them and answers every round): the error line said "(upgrade it, or call
rounds() without them)", AdminClient's advice to a Python caller, not the command's flags
(helper-140's review)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from coordinator.cli import main
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.rounds import Coordinator

from .test_h142_rounds_query import abandoned_rounds
from .test_service_support import ADMIN, create_task, task_config


@pytest.fixture
def old(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int, int]]:
    """(url, task id, its second round's id) of a coordinator that, as one before ?last and
    ?before, answers every round of the task whatever the query."""
    real = Coordinator.task_rounds

    def every_round(self: Coordinator, task_id: int, last: Any, before: Any) -> Any:
        return real(self, task_id, None, None)

    monkeypatch.setattr(Coordinator, "task_rounds", every_round)
    db = tmp_path / "p.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, task_config(rounds=100))
        yield url, task_id, abandoned_rounds(db, task_id, 3)[1]


@pytest.mark.parametrize(
    "flags", [("--last", "1"), ("--before", "{b}"), ("--last", "1", "--before", "{b}")]
)
def test_the_error_says_to_drop_the_flags(
    old: tuple[str, int, int], flags: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    url, task_id, second = old
    given = [f.format(b=second) for f in flags]
    code = main(["coordinator", "status", "--url", url, "--admin-token", ADMIN, "--task",
                 str(task_id), *given])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        f"plume coordinator status: error: the coordinator at {url} ignored --last/--before "
        f"and answered every round of task {task_id}: it predates them; upgrade it, or drop "
        "--last/--before\n"
    )
