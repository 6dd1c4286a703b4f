"""An app directory reused against a coordinator whose database was replaced (a new, empty one at
the same URL: round and task ids start again at 1).

The app directory keys its records of accepted uploads (`accepted-<r>.*`) and its pending upload
by round id (and task id), which the new database hands out again for unrelated rounds. Before,
the device asked the new coordinator about round 1 (`awaiting_round`), was assigned the new round
1, and when that round's upload was accepted the old record was taken for an earlier round of the
same id and its content put back into the residual, to be sent to the new task; a pending upload
was re-sent to the new database's round of its id. The one signal that tells the two apart is the
registration: the new database registers the device anew (`created: true`), and a coordinator that
has just registered the device holds none of its uploads. `register()` now sets the records and the
pending upload aside (forgotten as delivered), with a warning naming them. A coordinator restarted
on its own database answers `created: false`, and the records stay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from sdk import Client
from sdk.client import ClientError
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    await_assignment,
    create_task,
    local_data,
    task_config,
)

DOC = Path(__file__).parents[2] / "docs" / "devices.md"
DOC_URL = "http://127.0.0.1:8080/"


def _serve(db: Path, port: int = 0) -> ServerThread:
    return ServerThread(
        ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02), port=port
    )


def _task(url: str) -> int:
    with httpx.Client(base_url=url) as http:
        return create_task(
            http, task_config(clients_per_round=1, rounds=3, deadline_s=60.0,
                              selection_timeout_s=0.2),
        )  # fmt: skip


def _offline_uploads(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
    """The network drops every upload (the device keeps it pending); the rest passes."""
    if request.method == "POST" and request.url.path.endswith("/updates"):
        raise httpx.ConnectError("offline")
    return nxt(request)


def _first_life(url: str, root: Path, leave_pending: bool) -> int:
    """Round 1 of a task of the coordinator at `url`: delivered (an accepted record left, its
    outcome not asked yet), or with `leave_pending` its upload left pending. The task's id."""
    task_id = _task(url)
    x, y = local_data(1)
    mods = (_offline_uploads,) if leave_pending else ()
    with Client(url, str(root), mods=mods, retries=0, sleep=lambda s: None) as c:
        c.register()
        a = await_assignment(c, task_id)
        if leave_pending:
            with pytest.raises(ClientError):
                c.train_round(a, SoftmaxTrainer(), x, y)
        else:
            c.train_round(a, SoftmaxTrainer(), x, y)
    return task_id


@pytest.mark.parametrize("leave_pending", [False, True])
def test_a_new_database_sets_the_old_uploads_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, leave_pending: bool
) -> None:
    # Prepare: the device's first coordinator, then a new database at the same address
    root = tmp_path / "dev"
    with _serve(tmp_path / "first.db") as url:
        old_task = _first_life(url, root, leave_pending)
        port = httpx.URL(url).port
    if leave_pending:
        assert (root / "pending.json").exists()
    else:
        assert (root / "accepted-1.json").exists()
    x, y = local_data(2)
    with _serve(tmp_path / "second.db", port) as url2:
        assert url2 == url
        new_task = _task(url2)
        assert new_task == old_task  # ids start again: task 1, round 1
        with Client(url2, str(root), sleep=lambda s: None) as c:
            # Execute
            with caplog.at_level(logging.WARNING, logger="plume.sdk"):
                c.register()
            after_register = sorted(p.name for p in root.glob("accepted-*"))
            pending_after = (root / "pending.json").exists()
            # the device takes part in the new database's round 1 as any new device would
            report = c.participate(SoftmaxTrainer(), x, y, task_id=new_task, max_wait_s=20.0)

    # Assert: set aside at the registration, and said
    assert after_register == [] and not pending_after
    warned = [r.getMessage() for r in caplog.records if r.name == "plume.sdk"]
    assert len(warned) == 1, warned
    what = "pending upload to round 1" if leave_pending else "accepted upload to round 1"
    assert what in warned[0] and "task 1" in warned[0]
    # Since s54a the new database's incarnation tells it (and sets the residual and model
    # aside too: tests/sdk/test_s54a_incarnation.py, which checks the line docs/devices.md
    # shows); `created` alone, against a coordinator before incarnations, says it as before.
    assert "serves another database" in warned[0]
    # the new round ran from the new task's model, not resent (the old pending is gone)
    assert report is not None and report.round_id == 1 and not report.resent
    assert report.receipt.accepted
    # the only record is the new round's, of the frame just sent
    assert sorted(p.name for p in root.glob("accepted-*.json")) == ["accepted-1.json"]


def test_the_same_database_restarted_keeps_the_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: round 1 delivered, then the coordinator restarts on its own database
    root, db = tmp_path / "dev", tmp_path / "plume.db"
    with _serve(db) as url:
        _first_life(url, root, leave_pending=False)
        port = httpx.URL(url).port
    with _serve(db, port) as url2, Client(url2, str(root), sleep=lambda s: None) as c:
        # Execute
        with caplog.at_level(logging.WARNING, logger="plume.sdk"):
            c.register()
        held = c._core.store.accepted_rounds()
        # the record is settled as before: the restarted coordinator knows the round
        answer = c.check_in()

    # Assert
    assert held == [1]
    assert [r for r in caplog.records if r.name == "plume.sdk"] == []
    assert answer.round_outcome == "committed"
    assert not (root / "accepted-1.json").exists()


def test_a_first_registration_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _serve(tmp_path / "plume.db") as url, Client(url, str(tmp_path / "dev")) as c:
        with caplog.at_level(logging.WARNING, logger="plume.sdk"):
            c.register()
    assert [r for r in caplog.records if r.name == "plume.sdk"] == []
