"""A schemathesis sweep of the device routes with valid signatures, against the real server on
loopback. The unsigned sweep (test_service_schemathesis.py) stops at 401 on every device route;
here each generated request is signed by a registered device, and half of them are aimed at a
real open round (plain or secure) that the device was selected for, so the generated bodies
reach the frame decoder and the SecAgg+ message parser. Every answer must be a 4xx with a JSON
reason or a success, and nothing may change: the tasks' models and both rounds stay as they were.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from protocol import auth
from protocol.names import Header
from sdk.client import Client

from .test_service_support import ADMIN, admin_get, create_task, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
# Device routes: every path of the API that takes a signed request.
DEVICE_PATHS = (
    "/v1/checkin",
    "/v1/tasks/{task_id}/model",
    "/v1/rounds/{round_id}/updates",
    "/v1/rounds/{round_id}",
    "/v1/secure/rounds/{round_id}/setup",
    "/v1/secure/rounds/{round_id}/stages/{stage}",
    "/v1/secure/rounds/{round_id}/result",
)


@dataclass
class World:
    url: str
    http: httpx.Client
    key: bytes  # device A's private key
    plain_task: int
    plain_round: int
    secure_task: int
    secure_round: int


def _assignment_rounds(clients: list[Client], task_id: int) -> set[int]:
    """Check every client in, round-robin, until each has an assignment; their round ids."""
    rounds: dict[str, int] = {}
    give_up = time.monotonic() + 20
    while len(rounds) < len(clients):
        for c in clients:
            if c.device_id not in rounds:
                answer = c.check_in(task_id)
                if answer.assignment is not None:
                    rounds[c.device_id] = answer.assignment.round_id
        assert time.monotonic() < give_up, "no assignment"
        time.sleep(0.05)
    return set(rounds.values())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # Prepare: a plain round with device A selected, and a secure round of A, B and C waiting
    # in its first stage (long deadlines, so neither closes during the sweep).
    root: Path = tmp_path_factory.mktemp("signed_sweep")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        plain = create_task(
            http, task_config(clients_per_round=1, deadline_s=600, selection_timeout_s=600)
        )
        secure = create_task(
            http,
            task_config(
                clients_per_round=3,
                min_reports=3,
                deadline_s=600,
                selection_timeout_s=600,
                secure={"coord_fraction": 0.5, "stage_timeout_s": 600.0},
            ),
        )
        devices = [Client(url, str(root / f"dev{i}")) for i in range(3)]
        try:
            for d in devices:
                d.register()
            (plain_round,) = _assignment_rounds(devices[:1], plain)
            secure_rounds = _assignment_rounds(devices, secure)
            assert len(secure_rounds) == 1
            yield World(
                url,
                http,
                devices[0]._core.key,
                plain,
                plain_round,
                secure,
                secure_rounds.pop(),
            )
        finally:
            for d in devices:
                d.close()


def _snapshot(w: World) -> dict[str, Any]:
    """What no refused request may change: both tasks, and both rounds' state and counts."""
    out: dict[str, Any] = {}
    for task_id in (w.plain_task, w.secure_task):
        t = admin_get(w.http, f"/v1/admin/tasks/{task_id}")
        out[f"task{task_id}"] = (t["state"], t["version"], t["model_digest"], t["current_round"])
    for round_id in (w.plain_round, w.secure_round):
        r = admin_get(w.http, f"/v1/rounds/{round_id}")
        out[f"round{round_id}"] = (r["state"], r["selected"], r["reports"], r["measurements"])
    return out


def _signed(w: World, kwargs: dict[str, Any], round_id: int, idempotent: bool) -> httpx.Request:
    """The generated request, signed by device A for `round_id` (0 if out of the signable
    range, as the SDK signs requests outside a round)."""
    headers = {
        k: v
        for k, v in (kwargs.get("headers") or {}).items()
        if k.lower() not in ("authorization", "user-agent")
    }
    body: dict[str, Any] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        body["content"] = data if isinstance(data, bytes) else str(data).encode()
    request = w.http.build_request(
        kwargs["method"], kwargs["url"], params=kwargs.get("params"), headers=headers, **body
    )
    if idempotent:
        request.headers[Header.IDEMPOTENCY_KEY] = uuid.uuid4().hex
    signed_round = round_id if 0 <= round_id < 2**63 else 0
    signature = auth.sign_request(
        w.key,
        method=request.method,
        target=request.url.raw_path.decode("ascii"),
        round_id=signed_round,
        body=request.read(),
        timestamp_ms=int(time.time() * 1000),
    )
    request.headers.update(signature)
    return request


def test_signed_generated_requests_are_refused_cleanly_and_change_nothing(world: World) -> None:
    schema = schemathesis.openapi.from_url(f"{world.url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    device_ops = [op for op in operations if op.path in DEVICE_PATHS]
    assert {op.path for op in device_ops} == set(DEVICE_PATHS)
    before = _snapshot(world)
    seen: list[int] = []
    aimed = {"random": None, "plain": world.plain_round, "secure": world.secure_round}

    for operation in device_ops:

        @given(
            case=operation.as_strategy(),
            target=st.sampled_from(sorted(aimed)),
            idempotent=st.booleans(),
        )
        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any, target: str, idempotent: bool) -> None:
            # Prepare: aim at a real round (or task) for two thirds of the cases
            params = case.path_parameters or {}
            if aimed[target] is not None and "round_id" in params:
                params["round_id"] = aimed[target]
            if target != "random" and "task_id" in params:
                params["task_id"] = world.plain_task if target == "plain" else world.secure_task
            kwargs = case.as_transport_kwargs(base_url=world.url)
            round_id = params.get("round_id", 0)
            round_id = round_id if isinstance(round_id, int) else 0

            # Execute
            response = world.http.send(_signed(world, kwargs, round_id, idempotent))

            # Assert: a success or a refusal with its reason; never a 5xx
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, kwargs["url"], response.text)
            if response.status_code >= 400:
                assert response.json()["reason"], response.text

        run()

    # Assert: past authentication (not all 401), and nothing changed
    assert sum(code != 401 for code in seen) > len(seen) // 2, seen
    assert {400, 404, 422} <= set(seen), sorted(set(seen))
    assert _snapshot(world) == before
    assert world.http.get("/healthz").json()["ok"] is True
