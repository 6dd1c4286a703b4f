"""`POST /v1/admin/tasks` reads the task config with the protocol's strict parser
(`protocol.messages.from_json`), as every other message is read: a value of the wrong JSON type
is 422 `validation` naming the field. FastAPI's model parser, which read it alone until
2026-12-07, coerced: `"rounds": true` created a task of 1 round, `"rounds": 2.0` and
`"clients_per_round": "2"` were taken as 2, and `"over_selection": true` as 1.0 (helper s61b's
finding). Through ASGI, as tests/coordinator/test_s61b_task_config_shapes.py does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServiceConfig
from coordinator.service.app import create_app
from protocol.messages import to_json

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}


def _create(tmp_path: Path, **fields: Any) -> tuple[httpx.Response, httpx.Response | None]:
    """POST the test task config with `fields` replaced; the answer, and the task's admin
    status when it was created."""
    app = create_app(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    doc = {**to_json(task_config()), **fields}

    async def run() -> tuple[httpx.Response, httpx.Response | None]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://plume") as client:
            made = await client.post("/v1/admin/tasks", json=doc, headers=AUTH)
            if made.status_code != 201:
                return made, None
            task = await client.get(f"/v1/admin/tasks/{made.json()['task_id']}", headers=AUTH)
            return made, task

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        ("rounds", True, "body.rounds: expected an integer"),
        ("rounds", 2.0, "body.rounds: expected an integer"),
        ("rounds", "2", "body.rounds: expected an integer"),
        ("clients_per_round", "2", "body.clients_per_round: expected an integer"),
        ("min_reports", 1.0, "body.min_reports: expected an integer"),
        ("seed", False, "body.seed: expected an integer"),
        ("over_selection", True, "body.over_selection: expected a number"),
        ("deadline_s", "30", "body.deadline_s: expected a number"),
        ("codec", {"topk": 0.25, "bits": 8.0}, "body.codec.bits: expected an integer"),
        ("training", {"local_epochs": True}, "body.training.local_epochs: expected an integer"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_422_naming_the_field(
    tmp_path: Path, field: str, value: Any, detail: str
) -> None:
    made, _ = _create(tmp_path, **{field: value})
    assert made.status_code == 422, made.text
    assert made.json() == {"reason": "validation", "detail": detail}


def test_an_integer_for_a_number_is_taken_and_the_task_is_as_sent(tmp_path: Path) -> None:
    # A JSON integer is a number (deadline_s: 30), as everywhere in the protocol.
    made, task = _create(tmp_path, deadline_s=30, over_selection=1, server_lr=2)
    assert made.status_code == 201, made.text
    assert task is not None and task.status_code == 200, task
    config = task.json()["config"]
    assert (config["deadline_s"], config["over_selection"], config["server_lr"]) == (30.0, 1.0, 2.0)
    assert config["rounds"] == task_config().rounds
