"""Check-in `max_model_bytes`: a device tells the coordinator the largest model it takes, and a
task whose model is larger (`ModelSpec.dense_bytes`, 4 bytes a parameter: the SDK's own measure)
is not given to it (docs/http-api.md, "The largest model a device takes").

The gap (helper-210's review of db68ea2): the SDK refused such a task's model only after the
coordinator had assigned it the round, so a device checking in for any task was handed the same
oversized task again and again (it never trained) and held a selection slot in its rounds (a
selected device that never reports). Now a check-in naming no task passes the task over, one
naming it is 409 `model_too_large`, and a check-in without the field (an older SDK) is answered
as before. Against a real loopback coordinator with two tasks, the larger one created first (so
it is the one a check-in naming no task was given before), and hand-signed check-ins.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import ModelSpec, encode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import TensorShape, to_json
from sdk import TrainResult
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SHAPES,
    admin_get,
    local_data,
    signed_headers,
    task_config,
    wait_until,
)

BIG_SHAPES = [("w", (100, 16)), ("b", (100,))]
BIG = ModelSpec.from_shapes(BIG_SHAPES)  # 1,700 parameters: 6,800 bytes
CAP = 1000  # between the two models: task_config's (SHAPES) has 170 parameters, 680 bytes
X, Y = local_data(0)
IDLE_RETRY_S = 30.0  # ServiceConfig.idle_retry_s's default
AUTH = {"authorization": f"Bearer {ADMIN}"}


def create_sized_task(
    http: httpx.Client, shapes: list[tuple[str, tuple[int, ...]]], **over: Any
) -> int:
    """A task of the model of `shapes` (one-device rounds unless `over` says otherwise),
    running."""
    settings: dict[str, Any] = {
        "clients_per_round": 1, "deadline_s": 600.0, "selection_timeout_s": 600.0, **over,
    }  # fmt: skip
    spec = ModelSpec.from_shapes(shapes)
    cfg = task_config(spec=[TensorShape(n, list(s)) for n, s in shapes], **settings)
    r = http.post("/v1/admin/tasks", json=to_json(cfg), headers=AUTH)
    assert r.status_code == 201, r.text
    task = int(r.json()["task_id"])
    params = np.random.default_rng(task).normal(0, 0.1, spec.size).astype(np.float32)
    r = http.put(
        f"/v1/admin/tasks/{task}/model",
        content=encode_snapshot(params, spec, "fp32"),
        headers={**AUTH, "content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    return task


class World:
    """A coordinator and registered devices whose check-ins are signed by hand."""

    def __init__(self, url: str, root: Path) -> None:
        self.root = root
        self.http = httpx.Client(base_url=url)
        self.url = url
        self.devices: list[Client] = []

    def device(self) -> Client:
        d = Client(self.url, str(self.root / f"d{len(self.devices)}"))
        d.register()
        self.devices.append(d)
        return d

    def check_in(self, device: Client, body: bytes) -> httpx.Response:
        headers = signed_headers(device._core.key, "POST", "/v1/checkin", 0, body)
        headers["content-type"] = "application/json"
        return self.http.post("/v1/checkin", content=body, headers=headers)

    def pool(self, task_id: int) -> int:
        return int(admin_get(self.http, f"/v1/admin/tasks/{task_id}")["pool"])

    def close(self) -> None:
        for d in self.devices:
            d.close()
        self.http.close()


def _world(root: Path) -> Iterator[World]:
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        w = World(url, root)
        yield w
        w.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path)


@pytest.fixture(scope="module")
def refusing_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One coordinator for the cases of a refused check-in: each creates its own task and
    device, and a refused check-in changes nothing another case reads (a coordinator each
    was 12 starts, ~9 of the file's 25 s under `make test`)."""
    yield from _world(tmp_path_factory.mktemp("h212"))


def _assigned(response: httpx.Response) -> int:
    """The task of a "train" answer's assignment."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["action"] == "train", body
    return int(body["assignment"]["task_id"])


def test_a_check_in_naming_no_task_gets_the_task_that_fits_never_the_larger_one(
    world: World,
) -> None:
    # Prepare: the larger task first (a lower id: the one such a check-in was given before)
    big = create_sized_task(world.http, BIG_SHAPES)
    small = create_sized_task(world.http, SHAPES)
    device = world.device()
    # Execute
    first = world.check_in(device, f'{{"max_model_bytes":{CAP}}}'.encode())
    # Assert: the small task's round, and the device is in no round or pool of the big one
    assert _assigned(first) == small
    assert world.pool(big) == 0
    big_status = admin_get(world.http, f"/v1/admin/tasks/{big}")
    assert big_status["current_round"] is None


def test_devices_under_the_cap_never_fill_the_larger_tasks_rounds(world: World) -> None:
    # Prepare: the larger task's rounds want two devices; three capped devices and one without
    # a cap check in, twice each
    big = create_sized_task(world.http, BIG_SHAPES, clients_per_round=2)
    small = create_sized_task(world.http, SHAPES, clients_per_round=3)
    capped = [world.device() for _ in range(3)]
    free = world.device()
    # Execute
    assigned: dict[int, set[int]] = {}
    for _ in range(2):
        for i, d in enumerate(capped):
            r = world.check_in(d, f'{{"max_model_bytes":{CAP}}}'.encode())
            if r.json()["action"] == "train":
                assigned.setdefault(i, set()).add(_assigned(r))
    # Assert: the capped devices filled the small task's round, none the big task's pool
    assert assigned == {0: {small}, 1: {small}, 2: {small}}
    assert world.pool(big) == 0
    # and a device without a cap is the big task's only one: its round does not open
    world.check_in(free, b"{}")
    assert world.pool(big) == 1
    assert admin_get(world.http, f"/v1/admin/tasks/{big}")["current_round"] is None


def test_a_check_in_naming_the_larger_task_is_refused_with_a_reason(world: World) -> None:
    # Prepare
    big = create_sized_task(world.http, BIG_SHAPES)
    device = world.device()
    # Execute
    response = world.check_in(device, f'{{"task_id":{big},"max_model_bytes":{CAP}}}'.encode())
    # Assert: 409 naming the task, the model's size and the device's limit; no round opened
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["reason"] == "model_too_large"
    assert f"task {big}'s model is 6800 bytes (1700 float32 parameters" in body["detail"]
    assert f"max_model_bytes={CAP}" in body["detail"]
    assert world.pool(big) == 0
    assert admin_get(world.http, f"/v1/admin/tasks/{big}")["current_round"] is None


def test_a_model_exactly_at_the_cap_is_given(world: World) -> None:
    # Prepare: the SDK refuses only a model over its limit
    big = create_sized_task(world.http, BIG_SHAPES)
    device = world.device()
    # Execute
    named = world.check_in(
        device, f'{{"task_id":{big},"max_model_bytes":{BIG.dense_bytes}}}'.encode()
    )
    # Assert
    assert _assigned(named) == big


def test_a_check_in_without_the_field_is_given_the_larger_task_as_before(world: World) -> None:
    # Prepare
    big = create_sized_task(world.http, BIG_SHAPES)
    create_sized_task(world.http, SHAPES)
    device, other = world.device(), world.device()
    # Execute: an older SDK's bodies, naming no task and naming the big one; and null
    anything = world.check_in(device, b'{"features":["error_feedback_off"]}')
    named = world.check_in(other, f'{{"task_id":{big},"max_model_bytes":null}}'.encode())
    # Assert
    assert _assigned(anything) == big
    assert named.status_code == 200 and named.json()["action"] == "wait"
    assert world.pool(big) == 1


def test_with_only_the_larger_task_running_the_wait_says_why(world: World) -> None:
    # Prepare
    big = create_sized_task(world.http, BIG_SHAPES)
    device = world.device()
    # Execute
    response = world.check_in(device, f'{{"max_model_bytes":{CAP}}}'.encode())
    # Assert: an idle wait (a task that fits may be created at any time) naming the task
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["action"], body["retry_after_s"]) == ("wait", IDLE_RETRY_S)
    assert body["detail"].startswith("no active task this device can run: ")
    assert f"task {big}'s model is 6800 bytes" in body["detail"]
    assert f"max_model_bytes={CAP}" in body["detail"]
    assert world.pool(big) == 0


def test_a_device_in_the_pool_leaves_it_once_it_declares_a_smaller_cap(world: World) -> None:
    # Prepare: a device in the big task's pool (rounds of three: none opens)
    big = create_sized_task(world.http, BIG_SHAPES, clients_per_round=3)
    device = world.device()
    world.check_in(device, b"{}")
    assert world.pool(big) == 1
    # Execute: the app lowered its limit
    world.check_in(device, f'{{"max_model_bytes":{CAP}}}'.encode())
    # Assert: no round opened by the others can select it
    assert world.pool(big) == 0


def test_a_device_selected_before_it_declared_the_cap_gets_no_assignment(world: World) -> None:
    # Prepare: selected for the big task's round by a check-in without the field
    big = create_sized_task(world.http, BIG_SHAPES)
    device = world.device()
    assert _assigned(world.check_in(device, b"{}")) == big
    # Execute
    named = world.check_in(device, f'{{"task_id":{big},"max_model_bytes":{CAP}}}'.encode())
    anything = world.check_in(device, f'{{"max_model_bytes":{CAP}}}'.encode())
    # Assert
    assert named.status_code == 409 and named.json()["reason"] == "model_too_large"
    assert anything.status_code == 200 and anything.json()["action"] == "wait"


def test_a_done_or_stopped_larger_task_is_still_answered_end(world: World) -> None:
    # Prepare: a big task that ran its one round (a device without a cap trained it), and a
    # big task the operator stopped
    done = create_sized_task(world.http, BIG_SHAPES, rounds=1)
    stopped = create_sized_task(world.http, BIG_SHAPES)
    worker = world.device()
    worker.train_round(_await(worker, done), _Nudge(), X, Y)
    wait_until(world.http, f"/v1/admin/tasks/{done}", "state", "done")
    r = world.http.post(f"/v1/admin/tasks/{stopped}/stop", headers=AUTH)
    assert r.status_code == 200, r.text
    device = world.device()
    # Execute
    answers = [
        world.check_in(device, f'{{"task_id":{t},"max_model_bytes":{CAP}}}'.encode())
        for t in (done, stopped)
    ]
    # Assert: "end" keeps its meaning (the task runs no more rounds), whatever the cap
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["action"] == "end"


class _Nudge:
    """A `LocalTrainer` for a model of any layout: every parameter down by 0.01."""

    def train(self, params: Any, x: Any, y: Any, **kwargs: Any) -> TrainResult:
        return TrainResult((params - 0.01).astype(np.float32), len(x), 0.0)


def _await(device: Client, task: int) -> Any:
    answer = device.check_in(task)
    assert answer.assignment is not None, answer
    return answer.assignment


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0", "outside [4, 9223372036854775808)"),
        ("3", "outside [4,"),
        ("-1", "outside [4,"),
        ("9223372036854775808", "outside [4,"),
        ("true", "expected an integer number of bytes, got bool"),
        ('"1000"', "expected an integer number of bytes, got str"),
        ("1000.0", "expected an integer number of bytes, got float"),
        ("1e3", "expected an integer number of bytes, got float"),
        ("1.5", "max_model_bytes"),
        ("[1000]", "max_model_bytes"),
        ('{"bytes":1000}', "max_model_bytes"),
        ('"lots"', "max_model_bytes"),
    ],
)
def test_a_malformed_max_model_bytes_is_422_naming_the_field(
    refusing_world: World, value: str, why: str
) -> None:
    # Prepare: a task and a device of this case's own
    world = refusing_world
    big = create_sized_task(world.http, BIG_SHAPES)
    device = world.device()
    # Execute
    response = world.check_in(device, f'{{"max_model_bytes":{value}}}'.encode())
    # Assert: refused, and the device joined no pool
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["reason"] == "validation"
    assert "max_model_bytes" in body["detail"] and why in body["detail"]
    assert world.pool(big) == 0
