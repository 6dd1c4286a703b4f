"""The SDK declares what it honours in every check-in (`"features": ["error_feedback_off"]`), and
a task that needs a feature it does not declare ends `participate` with
`sdk.client.SdkUnsupportedError` (the coordinator's 409 `sdk_unsupported`) instead of a poll
that could never succeed.

Against a real loopback coordinator. An SDK lacking a feature (a newer coordinator's) is this
SDK with `sdk.client.FEATURES` emptied; a coordinator before `features` is shown by the request
model it parsed check-ins with (`CheckInRequest`), which drops the key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

import sdk.client
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import CheckInRequest, CodecParams
from protocol.names import Feature, Reason
from sdk import AsyncClient, Client, ClientError
from sdk.client import SdkUnsupportedError
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
)

X, Y = local_data(5)
EF_OFF = CodecParams(topk=0.25, bits=8, error_feedback=False)


class CheckIns:
    """A client mod that keeps the body of every check-in request."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request, nxt: Callable[[httpx.Request], Any]) -> Any:
        if request.url.path == "/v1/checkin":
            self.bodies.append(request.content)
        return nxt(request)

    async def mod(self, request: httpx.Request, nxt: Callable[[httpx.Request], Any]) -> Any:
        if request.url.path == "/v1/checkin":
            self.bodies.append(request.content)
        return await nxt(request)


class World:
    def __init__(self, url: str, http: httpx.Client) -> None:
        self.url = url
        self.http = http
        self.off = create_task(http, task_config(codec=EF_OFF, clients_per_round=3))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("sdkfeatures")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        yield World(url, http)


def test_every_check_in_declares_what_the_sdk_honours(world: World, tmp_path: Path) -> None:
    # Prepare
    seen = CheckIns()
    with Client(world.url, str(tmp_path / "d"), mods=(seen,)) as device:
        device.register()
        # Execute: naming the task and naming none
        named = device.check_in(world.off)
        anything = device.check_in()
    # Assert: the exact bytes (the feature last, after the model limit: test_h212), and the
    # task that needs it takes the device
    limit = '"max_model_bytes":268435456'
    assert seen.bodies == [
        f'{{"task_id":{world.off},{limit},"features":["error_feedback_off"]}}'.encode(),
        f'{{{limit},"features":["error_feedback_off"]}}'.encode(),
    ]
    assert named.action == anything.action == "wait"
    assert named.detail == anything.detail == "not selected yet"


@dataclass(slots=True)
class CheckInRequestBeforeFeatures:
    """`protocol.messages.CheckInRequest` as a coordinator before `features` had it."""

    task_id: int | None = None
    model_version: int | None = None
    awaiting_round: int | None = None


def test_a_coordinator_before_features_reads_the_check_in_as_before() -> None:
    # Prepare: this SDK's body and an older SDK's
    body = b'{"task_id":7,"model_version":3,"awaiting_round":9,"features":["error_feedback_off"]}'
    older = b'{"task_id":7,"model_version":3,"awaiting_round":9}'
    # the older route's body model, parsed as FastAPI parses it
    parse = TypeAdapter(CheckInRequestBeforeFeatures).validate_json
    # Execute / Assert: the key is dropped, not refused
    assert parse(body) == parse(older) == CheckInRequestBeforeFeatures(7, 3, 9)
    # and today's model reads both
    now = TypeAdapter(CheckInRequest).validate_json
    assert now(body) == CheckInRequest(7, 3, 9, ["error_feedback_off"])
    assert now(older) == CheckInRequest(7, 3, 9)


def test_participate_on_a_task_needing_a_feature_it_lacks_raises_once(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: this SDK as one that does not honour error feedback off
    monkeypatch.setattr(sdk.client, "FEATURES", ())
    seen = CheckIns()
    with Client(world.url, str(tmp_path / "d"), mods=(seen,)) as device:
        device.register()
        # Execute
        t0 = time.monotonic()
        with pytest.raises(SdkUnsupportedError) as caught:
            device.participate(SoftmaxTrainer(), X, Y, task_id=world.off, max_wait_s=30.0)
        took = time.monotonic() - t0
        with pytest.raises(SdkUnsupportedError):
            device.check_in(world.off)
    # Assert: one check-in, a ClientError naming the feature and the task, at once
    err = caught.value
    assert isinstance(err, ClientError)
    assert (err.status, err.reason, err.task_id) == (409, Reason.SDK_UNSUPPORTED, world.off)
    assert "error_feedback_off" in err.detail and "update the app's SDK" in err.detail
    sent = f'{{"task_id":{world.off},"max_model_bytes":268435456,"features":[]}}'
    assert seen.bodies == [sent.encode()] * 2
    assert took < 5.0


def test_the_async_client_raises_it_too(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setattr(sdk.client, "FEATURES", ())
    seen = CheckIns()

    async def run() -> SdkUnsupportedError:
        async with AsyncClient(world.url, str(tmp_path / "d"), mods=(seen.mod,)) as device:
            await device.register()
            with pytest.raises(SdkUnsupportedError) as caught:
                await device.participate(SoftmaxTrainer(), X, Y, task_id=world.off, max_wait_s=30.0)
            return caught.value

    # Execute
    err = asyncio.run(run())
    # Assert
    assert (err.status, err.reason, err.task_id) == (409, Reason.SDK_UNSUPPORTED, world.off)
    assert len(seen.bodies) == 1


def test_other_refusals_of_a_check_in_stay_plain_client_errors(
    world: World, tmp_path: Path
) -> None:
    # Prepare
    with Client(world.url, str(tmp_path / "d")) as device:
        device.register()
        # Execute: a task this coordinator does not have
        with pytest.raises(ClientError) as caught:
            device.check_in(world.off + 1000)
    # Assert
    assert caught.value.reason == "unknown_task"
    assert not isinstance(caught.value, SdkUnsupportedError)


def test_this_sdk_declares_every_feature_the_protocol_names() -> None:
    # A feature added to protocol.names.Feature must be honoured by this SDK before it is
    # declared; and what it declares is what the coordinator's check accepts.
    from coordinator.service import rounds

    assert set(sdk.client.FEATURES) == set(Feature)
    assert rounds.check_features(list(sdk.client.FEATURES)) == {"error_feedback_off"}
