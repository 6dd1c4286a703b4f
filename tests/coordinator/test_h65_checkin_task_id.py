"""A check-in's `task_id` is read strictly, like `awaiting_round`: a JSON integer in [1, 2^63),
else 422 `validation` naming the field. Before, the request model's lax parsing took JSON
`true` and `"1"` (and 1.0) for task 1. The SDK sends a bare integer (sdk/client.py
check_in_exchange), which is unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from sdk.client import Client

from .test_service_support import ADMIN, create_task, signed_headers, task_config


class World:
    def __init__(self, url: str, root: Path) -> None:
        self.http = httpx.Client(base_url=url)
        self.task = create_task(self.http, task_config(clients_per_round=3, deadline_s=600))
        self.device = Client(url, str(root / "d"))
        self.device.register()

    def check_in(self, body: bytes) -> httpx.Response:
        headers = signed_headers(self.device._core.key, "POST", "/v1/checkin", 0, body)
        headers["content-type"] = "application/json"
        return self.http.post("/v1/checkin", content=body, headers=headers)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("taskid")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        w = World(url, root)
        yield w
        w.device.close()
        w.http.close()


@pytest.mark.parametrize(
    "value", ["true", '"1"', "1.0", "0", "-1", str(2**63), str(2**70), "[1]", '{"id": 1}']
)
def test_a_task_id_that_is_not_a_json_integer_id_is_refused_with_a_reason(
    world: World, value: str
) -> None:
    # Execute
    response = world.check_in(b'{"task_id": ' + value.encode() + b"}")
    # Assert
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "validation"
    assert "task_id" in response.json()["detail"]


def test_an_integer_task_id_and_none_are_read_as_before(world: World) -> None:
    # The SDK's form (a bare integer), an explicit null and no task_id at all
    for body in (f'{{"task_id": {world.task}}}'.encode(), b'{"task_id": null}', b"{}"):
        response = world.check_in(body)
        assert response.status_code == 200, response.text
        assert response.json()["action"] == "wait"


def test_the_sdk_check_in_names_its_task(world: World) -> None:
    # The SDK's own request for a task goes through (its body is `"task_id":<int>`)
    answer = world.device.check_in(world.task)
    assert answer.action == "wait"
