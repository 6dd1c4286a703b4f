"""The check-in's `awaiting_round` / `round_outcome` on a live coordinator: what each outcome
means, strict validation of the request field (422 `validation` with a reason), and answers to
devices that do not ask staying the bytes they were."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from protocol import auth
from protocol.messages import UploadOutcome
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    admin_get,
    await_assignment,
    create_task,
    local_data,
    task_config,
)

MAX_ID = 2**63


class World:
    """Round `committed` holds device A's upload; round `open` is open with C selected."""

    def __init__(self, url: str, root: Path) -> None:
        self.http = httpx.Client(base_url=url)
        done = create_task(self.http, task_config(rounds=1, clients_per_round=1))
        self.a = Client(url, str(root / "a"))
        self.b = Client(url, str(root / "b"))
        self.c = Client(url, str(root / "c"))
        for d in (self.a, self.b, self.c):
            d.register()
        x, y = local_data(4)
        report = self.a.train_round(await_assignment(self.a, done), SoftmaxTrainer(), x, y)
        self.committed = report.round_id
        give_up = time.monotonic() + 20
        while admin_get(self.http, f"/v1/rounds/{self.committed}")["state"] != "committed":
            assert time.monotonic() < give_up
            time.sleep(0.02)
        running = create_task(self.http, task_config(rounds=1, clients_per_round=1, deadline_s=600))
        self.open = await_assignment(self.c, running).round_id

    def check_in(self, key: bytes, body: bytes) -> httpx.Response:
        headers = {
            str(k): v
            for k, v in auth.sign_request(
                key, method="POST", target="/v1/checkin", round_id=0, body=body,
                timestamp_ms=int(time.time() * 1000),
            ).items()
        }  # fmt: skip
        headers["content-type"] = "application/json"
        return self.http.post("/v1/checkin", content=body, headers=headers)

    def asks(self, device: Client, round_id: Any) -> httpx.Response:
        return self.check_in(device._core.key, json.dumps({"awaiting_round": round_id}).encode())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("outcome")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        w = World(url, root)
        yield w
        for d in (w.a, w.b, w.c):
            d.close()
        w.http.close()


def _outcome(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    outcome: str = response.json()["round_outcome"]
    return outcome


def test_each_device_learns_what_became_of_its_own_upload(world: World) -> None:
    # Execute / Assert: A's upload is in round `committed`; B never uploaded there; C's round
    # is still open; no round has id MAX_ID - 1
    assert _outcome(world.asks(world.a, world.committed)) == UploadOutcome.COMMITTED
    assert _outcome(world.asks(world.b, world.committed)) == UploadOutcome.EXCLUDED
    assert _outcome(world.asks(world.c, world.open)) == UploadOutcome.PENDING
    assert _outcome(world.asks(world.a, MAX_ID - 1)) == UploadOutcome.UNKNOWN


def test_a_check_in_that_does_not_ask_gets_the_answer_it_always_got(world: World) -> None:
    # Execute
    response = world.check_in(world.b._core.key, b"{}")

    # Assert: no round_outcome key at all (not even null): old clients' bytes are unchanged
    assert response.status_code == 200
    assert list(response.json()) == ["action", "retry_after_s", "assignment", "detail"]
    assert b"round_outcome" not in response.content


@pytest.mark.parametrize(
    "value",
    ['"7"', "7.0", "true", "0", "-1", str(MAX_ID), str(2**70), "[7]", '{"id": 7}'],
)
def test_a_bad_awaiting_round_is_refused_with_a_reason(world: World, value: str) -> None:
    # Execute
    body = b'{"awaiting_round": ' + value.encode() + b"}"
    response = world.check_in(world.b._core.key, body)

    # Assert
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "validation"
    assert "awaiting_round" in response.json()["detail"]


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=5,
)


@given(
    value=st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.integers(min_value=1, max_value=MAX_ID - 1),
        _JSON,
    )
)
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
def test_awaiting_round_is_accepted_exactly_in_the_id_range(world: World, value: Any) -> None:
    # Execute
    body = json.dumps({"awaiting_round": value}).encode()
    response = world.check_in(world.b._core.key, body)

    # Assert: null asks nothing; an integer in [1, 2^63) gets an outcome; anything else
    # (another type, a float, a boolean, an integer out of range) is 422 with a reason
    if value is None:
        assert response.status_code == 200 and "round_outcome" not in response.json()
    elif type(value) is int and 1 <= value < MAX_ID:
        assert _outcome(response) in set(UploadOutcome)
    else:
        assert response.status_code == 422, (value, response.text)
        assert response.json()["reason"] == "validation"
