"""A check-in naming a task that is over gets a terminal answer, not "wait".

Before, a check-in naming a done task or no task at all was answered as an idle one ("wait",
`idle_retry_s`, "no active task"), so `participate` polled until its `max_wait_s`. Now a done
task's is `{"action": "end", ...}` (with `retry_after_s`, so a client that knows only "train"
and "wait" waits as before) and an unknown task's is 404 `unknown_task`; a stopped task's was,
and stays, 409 `task_refused`. A check-in naming no task, or a task that may still run (paused,
awaiting its model), still gets "wait". In process, on a real store; then the bytes over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.rounds import Coordinator
from protocol.messages import CheckInResponse, MessageError, check_check_in, from_json
from protocol.names import CheckInAction, TaskState
from sdk import Client

from .test_h79_stop import DEVICES, _frame, _open_round, _refused, _start, _task
from .test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
    wait_until,
)

DONE_DETAIL = "task 1 is done: it runs no more rounds"


def _done_world(db: Path) -> tuple[Coordinator, int, int]:
    """A one-round task whose round committed (the task is done): (coordinator, task, round)."""
    cfg = task_config(rounds=1, clients_per_round=3, min_reports=1)
    coord = _start(db)
    task_id = _task(coord, cfg)
    round_id = _open_round(coord, task_id, DEVICES)
    for i, d in enumerate(DEVICES):
        _, to_close = coord.submit(round_id, d, f"k{d}", _frame(cfg, i))
    assert to_close is not None
    asyncio.run(coord.close_round(to_close))
    assert coord.task_status(task_id).state == TaskState.DONE
    return coord, task_id, round_id


def test_a_done_task_answers_end(tmp_path: Path) -> None:
    coord, task_id, round_id = _done_world(tmp_path / "p.db")
    # Execute: a device of its round, and one that never took part
    for device in ("a", "z"):
        answer = coord.check_in(device, task_id)
        # Assert
        assert answer.action == CheckInAction.END and answer.assignment is None
        assert answer.retry_after_s == coord.config.idle_retry_s
        assert answer.detail == DONE_DETAIL
        check_check_in(answer)  # a device can act on it
    assert coord.metrics.check_ins.labels("end")._value.get() == 2
    # ... and it still tells a device what became of its upload
    answer = coord.check_in("a", task_id, awaiting_round=round_id)
    assert (answer.action, answer.round_outcome) == ("end", "committed")
    # ... the task joins no pool, opens no round
    assert not coord.runtimes[task_id].pool and coord.runtimes[task_id].current is None


def test_an_unknown_task_is_404_and_a_stopped_one_ends(tmp_path: Path) -> None:
    coord, task_id, _ = _done_world(tmp_path / "p.db")
    err = _refused(lambda: coord.check_in("a", task_id + 1))
    assert (err.status, err.reason, err.detail) == (404, "unknown_task", f"no task {task_id + 1}")
    other = _task(coord, task_config(rounds=5, clients_per_round=3))
    coord.stop_task(other)
    answer = coord.check_in("a", other)
    assert (answer.action, answer.assignment, answer.retry_after_s) == (
        "end",
        None,
        coord.config.idle_retry_s,
    )
    assert answer.detail == f"task {other} was stopped by the operator; it runs no more rounds"


def test_tasks_that_may_still_run_and_no_task_named_still_wait(tmp_path: Path) -> None:
    coord, task_id, _ = _done_world(tmp_path / "p.db")
    # No task named, with only a done task: "wait" (a task may be created at any time)
    answer = coord.check_in("a")
    assert (answer.action, answer.detail) == ("wait", "no active task")
    assert answer.retry_after_s == coord.config.idle_retry_s
    # A task awaiting its model, and a paused one: "wait" (each may run later)
    waiting = coord.create_task(task_config())
    paused = _task(coord, task_config(clients_per_round=3))
    coord.set_paused(paused, True)
    for named in (waiting, paused):
        answer = coord.check_in("a", named)
        assert (answer.action, answer.detail) == ("wait", "no active task")
    # ... and once resumed, the paused one takes the device into its pool
    coord.set_paused(paused, False)
    assert coord.check_in("a", paused).detail == "not selected yet"


@pytest.mark.parametrize(
    "body",
    [
        {"action": "end", "retry_after_s": 1.0, "assignment": None, "detail": "x"},
        {"action": "end", "retry_after_s": 1.0},
    ],
)
def test_the_end_answer_parses_and_is_checked(body: dict[str, object]) -> None:
    answer = from_json(CheckInResponse, body)
    check_check_in(answer)
    assert answer.action == CheckInAction.END


def test_an_end_answer_with_an_assignment_is_refused(tmp_path: Path) -> None:
    coord = _start(tmp_path / "p.db")
    task_id = _task(coord, task_config(clients_per_round=1, min_reports=1))
    train = coord.check_in("a", task_id)
    assert train.assignment is not None
    bogus = CheckInResponse(CheckInAction.END, 1.0, train.assignment)
    with pytest.raises(MessageError, match='"end" but there is an assignment'):
        check_check_in(bogus)


def test_the_end_answer_over_http(tmp_path: Path) -> None:
    # Prepare: a loopback coordinator; one device runs the one-round task to its end
    seen: list[bytes] = []

    def keep(request: httpx.Request, nxt: Callable[[httpx.Request], httpx.Response]) -> Any:
        response = nxt(request)
        if request.url.path == "/v1/checkin":
            seen.append(response.read())
        return response

    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(rounds=1, clients_per_round=1))
        with Client(url, str(tmp_path / "dev"), mods=(keep,)) as device:
            device.register()
            x, y = local_data(1)
            assert device.participate(SoftmaxTrainer(), x, y, task_id=task_id) is not None
            wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
            # Execute
            answer = device.check_in(task_id)
            # Assert: the answer as sent
            assert answer.action == "end"
            ended = json.loads(seen[-1])
            # with the round_outcome, the database's incarnation (test_s54a_incarnation)
            assert len(ended.pop("incarnation")) == 32
            assert ended == {
                "action": "end",
                "retry_after_s": 30.0,
                "assignment": None,
                "detail": f"task {task_id} is done: it runs no more rounds",
                "round_outcome": "committed",  # the device's upload of the last round
            }
            # ... and a check-in naming no task is the idle "wait" it always was
            assert device.check_in().detail == "no active task"
            assert json.loads(seen[-1]) == {
                "action": "wait",
                "retry_after_s": 30.0,
                "assignment": None,
                "detail": "no active task",
            }
