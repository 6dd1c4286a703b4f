"""Check-in `features`: a device's SDK declares what it honours, and a task that needs a feature
is not given to a device that does not declare it (docs/http-api.md, "What the device's SDK
honours").

The gap: a task with `codec.error_feedback` false promises that no device carries a residual
from round to round (docs/privacy.md, item 5), but an older SDK ignores the field it does not
know and keeps its residual, and the coordinator could not tell. Now an older SDK's check-in
(no `features`) naming such a task is 409 `sdk_unsupported`, one naming no task passes the task
over (it waits, counted in `plume_check_ins_sdk_unsupported`), and a device the coordinator
selected before still gets no assignment from a check-in without the feature. Every other
answer is the same bytes with or without `features`. Against a real loopback coordinator, with
hand-signed requests standing in for an older SDK.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import CodecParams
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    admin_get,
    create_task,
    local_data,
    signed_headers,
    task_config,
    wait_until,
)

EF_OFF = CodecParams(topk=0.25, bits=8, error_feedback=False)
DECLARED = b'"features":["error_feedback_off"]'
IDLE_RETRY_S = 30.0  # ServiceConfig.idle_retry_s's default


class World:
    """A coordinator and one registered device whose check-ins are signed by hand."""

    def __init__(self, url: str, root: Path) -> None:
        self.http = httpx.Client(base_url=url)
        self.device = Client(url, str(root / "d"))
        self.device.register()

    def check_in(self, body: bytes) -> httpx.Response:
        headers = signed_headers(self.device._core.key, "POST", "/v1/checkin", 0, body)
        headers["content-type"] = "application/json"
        return self.http.post("/v1/checkin", content=body, headers=headers)

    def pool(self, task_id: int) -> int:
        return int(admin_get(self.http, f"/v1/admin/tasks/{task_id}")["pool"])

    def metric(self, task_id: int) -> float:
        """`plume_check_ins_sdk_unsupported` of the task (0 before its first count)."""
        want = f'plume_check_ins_sdk_unsupported_total{{feature="error_feedback_off",task="{task_id}"}}'
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        w = World(url, tmp_path)
        yield w
        w.device.close()
        w.http.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One coordinator for the tests that only read answers (no task, no state)."""
    root = tmp_path_factory.mktemp("features")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        w = World(url, root)
        yield w
        w.device.close()
        w.http.close()


def _ef_off_task(world: World, **over: object) -> int:
    settings: dict[str, object] = {
        "clients_per_round": 3, "deadline_s": 600.0, "selection_timeout_s": 600.0, **over,
    }  # fmt: skip
    return create_task(world.http, task_config(codec=EF_OFF, **settings))


def test_an_older_sdk_naming_a_task_with_error_feedback_off_is_refused_with_a_reason(
    world: World,
) -> None:
    # Prepare
    task = _ef_off_task(world)
    # Execute: the body an SDK before `features` sends
    response = world.check_in(f'{{"task_id":{task}}}'.encode())
    # Assert: a 409 naming the feature and what to do, and the device is not in the pool
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["reason"] == "sdk_unsupported"
    assert f"task {task}" in body["detail"]
    assert "error_feedback_off" in body["detail"]
    assert "update" in body["detail"] and "SDK" in body["detail"]
    assert world.pool(task) == 0
    assert world.metric(task) == 1.0


def test_a_device_declaring_the_feature_joins_the_pool(world: World) -> None:
    # Prepare
    task = _ef_off_task(world)
    # Execute
    response = world.check_in(f'{{"task_id":{task},'.encode() + DECLARED + b"}")
    # Assert
    assert response.status_code == 200, response.text
    assert response.json()["action"] == "wait"
    assert world.pool(task) == 1
    assert world.metric(task) == 0.0


def test_an_older_sdk_naming_no_task_waits_when_only_such_a_task_runs(world: World) -> None:
    # Prepare
    task = _ef_off_task(world)
    # Execute
    response = world.check_in(b"{}")
    # Assert: an idle wait saying why (another task may come that it can run), not in the pool,
    # counted for the operator
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["action"] == "wait"
    assert body["retry_after_s"] == IDLE_RETRY_S
    assert body["assignment"] is None
    assert "error_feedback_off" in body["detail"] and f"task {task}" in body["detail"]
    assert world.pool(task) == 0
    assert world.metric(task) == 1.0


def test_an_older_sdk_naming_no_task_joins_the_other_tasks_only(world: World) -> None:
    # Prepare
    off = _ef_off_task(world)
    plain = create_task(world.http, task_config(clients_per_round=3, selection_timeout_s=600.0))
    # Execute
    response = world.check_in(b"{}")
    # Assert: the plain task's usual answer; the task it cannot run passed over
    assert response.status_code == 200, response.text
    assert response.json()["detail"] == "not selected yet"
    assert (world.pool(off), world.pool(plain)) == (0, 1)
    assert world.metric(off) == 1.0


def test_a_plain_task_answers_the_same_bytes_with_or_without_features(world: World) -> None:
    # Prepare
    task = create_task(world.http, task_config(clients_per_round=3, selection_timeout_s=600.0))
    # Execute: an older SDK's body, then a newer one's, naming the task and naming none
    answers = [
        world.check_in(body).content
        for body in (
            f'{{"task_id":{task}}}'.encode(),
            f'{{"task_id":{task},'.encode() + DECLARED + b"}",
            b"{}",
            b"{" + DECLARED + b"}",
        )
    ]
    # Assert
    assert answers[0] == answers[1] == answers[2] == answers[3]
    assert (
        answers[0]
        == b'{"action":"wait","retry_after_s":0.05,"assignment":null,"detail":"not selected yet"}'
    )


def test_a_selected_device_checking_in_without_the_feature_gets_no_assignment(
    world: World,
) -> None:
    # Prepare: the device, declaring the feature, is selected (a round of one opens at once)
    task = _ef_off_task(world, clients_per_round=1, over_selection=1.0)
    first = world.check_in(f'{{"task_id":{task},'.encode() + DECLARED + b"}")
    assert first.json()["action"] == "train", first.text
    # Execute: the same device without the feature (e.g. selected by a coordinator before this
    # check existed, then asking again)
    response = world.check_in(f'{{"task_id":{task}}}'.encode())
    # Assert
    assert response.status_code == 409, response.text
    assert response.json()["reason"] == "sdk_unsupported"


def test_a_task_that_is_over_is_answered_end_without_the_feature(world: World) -> None:
    # Prepare: one task stopped, one done (its single round run by the SDK, which declares
    # the feature)
    stopped = _ef_off_task(world)
    r = world.http.post(
        f"/v1/admin/tasks/{stopped}/stop", headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert r.status_code == 200, r.text
    done = _ef_off_task(world, clients_per_round=1, over_selection=1.0, rounds=1)
    x, y = local_data(0)
    report = world.device.participate(SoftmaxTrainer(), x, y, task_id=done, max_wait_s=20.0)
    assert report is not None and report.receipt.accepted
    wait_until(world.http, f"/v1/admin/tasks/{done}", "state", "done")
    # Execute
    answers = [world.check_in(f'{{"task_id":{t}}}'.encode()) for t in (stopped, done)]
    # Assert: a device that cannot run the task is told it is over, as any other device is
    for response in answers:
        assert response.status_code == 200, response.text
        assert response.json()["action"] == "end"


@pytest.mark.parametrize(
    "value",
    [
        '"error_feedback_off"',
        "{}",
        "true",
        "[1]",
        "[true]",
        "[null]",
        '[["error_feedback_off"]]',
        '[""]',
        '["Error_feedback_off"]',
        '["error feedback off"]',
        '["1_feature"]',
        '["' + "a" * 65 + '"]',
        "[" + ",".join(['"a"'] * 33) + "]",
    ],
)
def test_features_that_are_not_a_short_list_of_names_are_refused(shared: World, value: str) -> None:
    # Execute
    response = shared.check_in(b'{"features":' + value.encode() + b"}")
    # Assert
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "validation"
    assert "features" in response.json()["detail"]


@pytest.mark.parametrize(
    "value",
    [
        "null",
        "[]",
        '["a_feature_from_the_future"]',
        '["error_feedback_off","error_feedback_off"]',
        '["' + "a" * 64 + '"]',
        "[" + ",".join(['"a"'] * 32) + "]",
    ],
)
def test_unknown_and_absent_features_are_taken(shared: World, value: str) -> None:
    # Execute
    response = shared.check_in(b'{"features":' + value.encode() + b"}")
    # Assert
    assert response.status_code == 200, response.text
    assert response.json()["action"] == "wait"


def test_an_unknown_feature_does_not_stand_in_for_a_needed_one(world: World) -> None:
    # Prepare
    task = _ef_off_task(world)
    # Execute
    response = world.check_in(f'{{"task_id":{task},"features":["error_feedback_on"]}}'.encode())
    # Assert
    assert response.status_code == 409, response.text
    assert np.isclose(world.metric(task), 1.0)
