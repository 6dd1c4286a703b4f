"""`participate` ends at once, raising `sdk.client.TaskEndedError`, when the task it names runs
no more rounds: done or stopped by the operator (the coordinator answers "end"). An unknown
task (404 `unknown_task`) is a plain `ClientError`: not final.

Before, a done or unknown task was answered "wait" like an idle check-in, so `participate`
kept polling (a signed request every `idle_retry_s`) until its `max_wait_s`, and a stopped
task's refusal was a plain `ClientError` an app could not tell from any other. Against a real
coordinator on loopback; every check-in is counted with a client mod."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from sdk import AsyncClient, Client, ClientError
from sdk.client import TASK_DONE, TaskEndedError
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
    wait_until,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}
X, Y = local_data(3)


class CheckIns:
    """A client mod that counts check-in requests (the times they were sent)."""

    def __init__(self) -> None:
        self.sent: list[float] = []

    def __call__(self, request: httpx.Request, nxt: Callable[[httpx.Request], Any]) -> Any:
        if request.url.path == "/v1/checkin":
            self.sent.append(time.monotonic())
        return nxt(request)

    async def mod(self, request: httpx.Request, nxt: Callable[[httpx.Request], Any]) -> Any:
        if request.url.path == "/v1/checkin":
            self.sent.append(time.monotonic())
        return await nxt(request)


def _server(root: Path) -> ServerThread:
    # idle_retry_s small: the old "wait" would have been many polls inside max_wait_s
    cfg = ServiceConfig(
        db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05, idle_retry_s=0.1
    )
    return ServerThread(cfg)


def _done_task(http: httpx.Client, root: Path, url: str) -> int:
    """A one-round, one-device task run to its end by a first device."""
    task_id = create_task(http, task_config(rounds=1, clients_per_round=1))
    with Client(url, str(root / "first")) as first:
        first.register()
        assert first.participate(SoftmaxTrainer(), X, Y, task_id=task_id) is not None
    wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
    return task_id


def test_participate_on_a_done_task_raises_after_one_check_in(tmp_path: Path) -> None:
    with _server(tmp_path) as url, httpx.Client(base_url=url) as http:
        task_id = _done_task(http, tmp_path, url)
        count = CheckIns()
        with Client(url, str(tmp_path / "dev"), mods=(count,)) as device:
            device.register()
            # Execute
            with pytest.raises(TaskEndedError) as caught:
                device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, max_wait_s=10.0)
            # Assert: one check-in, the answer kept, the reason machine-readable
            assert len(count.sent) == 1
            err = caught.value
            assert isinstance(err, ClientError)
            assert (err.status, err.reason, err.task_id) == (200, TASK_DONE, task_id)
            assert err.detail == f"task {task_id} is done: it runs no more rounds"
            assert device.last_check_in is not None and device.last_check_in.action == "end"


def test_participate_on_an_unknown_task_raises_a_plain_client_error(tmp_path: Path) -> None:
    # Not final (a task may yet be created, a database restored): a ClientError to act on,
    # not a TaskEndedError telling the app to stop asking
    with _server(tmp_path) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http)
        count = CheckIns()
        with Client(url, str(tmp_path / "dev"), mods=(count,)) as device:
            device.register()
            with pytest.raises(ClientError) as caught:
                device.participate(SoftmaxTrainer(), X, Y, task_id=task_id + 7, max_wait_s=10.0)
            assert len(count.sent) == 1
            err = caught.value
            assert not isinstance(err, TaskEndedError)
            assert (err.status, err.reason) == (404, "unknown_task")


def test_participate_waiting_on_a_task_that_is_stopped_ends_at_the_next_check_in(
    tmp_path: Path,
) -> None:
    # Prepare: a task whose round needs two devices and never times out: one device waits
    with _server(tmp_path) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(clients_per_round=2, selection_timeout_s=600.0))
        count = CheckIns()
        outcome: list[object] = []
        with Client(url, str(tmp_path / "dev"), mods=(count,)) as device:
            device.register()

            def run() -> None:
                try:
                    outcome.append(
                        device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, max_wait_s=20)
                    )
                except ClientError as exc:
                    outcome.append(exc)

            worker = threading.Thread(target=run)
            worker.start()
            give_up = time.monotonic() + 10
            while len(count.sent) < 3 and time.monotonic() < give_up:
                time.sleep(0.01)
            assert len(count.sent) >= 3, "the device never waited in the pool"
            # Execute
            r = http.post(f"/v1/admin/tasks/{task_id}/stop", headers=AUTH)
            assert r.status_code == 200, r.text
            stopped_at = time.monotonic()
            worker.join(10)
            # Assert: ended by the first check-in after the stop, long before max_wait_s
            assert not worker.is_alive()
            assert len([t for t in count.sent if t > stopped_at]) <= 1
            assert time.monotonic() - stopped_at < 5
            (err,) = outcome
            assert isinstance(err, TaskEndedError)
            assert (err.status, err.reason, err.task_id) == (200, TASK_DONE, task_id)
            assert "stopped by the operator" in err.detail
            assert device.last_check_in is not None and device.last_check_in.action == "end"


def test_the_async_client_ends_the_same_way(tmp_path: Path) -> None:
    with _server(tmp_path) as url, httpx.Client(base_url=url) as http:
        task_id = _done_task(http, tmp_path, url)
        count = CheckIns()

        async def run() -> TaskEndedError:
            async with AsyncClient(url, str(tmp_path / "dev"), mods=(count.mod,)) as device:
                await device.register()
                with pytest.raises(TaskEndedError) as caught:
                    await device.participate(
                        SoftmaxTrainer(), X, Y, task_id=task_id, max_wait_s=10.0
                    )
                with pytest.raises(ClientError) as unknown:
                    await device.participate(
                        SoftmaxTrainer(), X, Y, task_id=task_id + 7, max_wait_s=10.0
                    )
                assert unknown.value.reason == "unknown_task"
                assert not isinstance(unknown.value, TaskEndedError)
                return caught.value

        err = asyncio.run(run())
        assert (err.reason, err.task_id) == (TASK_DONE, task_id)
        assert len(count.sent) == 2


def test_a_device_naming_no_task_still_waits(tmp_path: Path) -> None:
    # Only a done task: a device with no task in mind is told to wait, and returns None
    with _server(tmp_path) as url, httpx.Client(base_url=url) as http:
        _done_task(http, tmp_path, url)
        with Client(url, str(tmp_path / "dev")) as device:
            device.register()
            assert device.participate(SoftmaxTrainer(), X, Y, max_wait_s=0.3) is None
            last = device.last_check_in
            assert last is not None and (last.action, last.detail) == ("wait", "no active task")
