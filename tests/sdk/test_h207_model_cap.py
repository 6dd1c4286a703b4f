"""`max_model_bytes`: the largest model a client downloads (4 bytes a parameter, as the task's
spec declares it; 256 MiB by default). Before, the download of a device whose trainer does not
tell its layout (any `LocalTrainer` but `TorchTrainer` and `OrtTrainer`, `fetch_model`,
`fetch_current`, `secure_round` with an `update`) was bounded only by the spec the coordinator
declares, up to 2^31 parameters (8 GiB read and held), helper-174's finding. A model over the
cap is now `ModelTooLargeError` before any request for it, snapshot or delta chain alike."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import ModelSpec
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import (
    Assignment,
    CheckInResponse,
    CodecParams,
    TensorShape,
    TrainingParams,
    to_json,
)
from sdk import AsyncClient, Client, ClientError, ModelTooLargeError
from sdk.client import MAX_MODEL_BYTES, MODEL_TOO_LARGE
from sdk.device_store import DeviceStore
from tests.coordinator.test_service_support import (
    ADMIN,
    SHAPES,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
)

X, Y = local_data(0)
SPEC = ModelSpec.from_shapes(SHAPES)  # 170 parameters: 680 bytes
MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


class _Requests:
    """A client mod keeping every request's path."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def sync_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        self.paths.append(request.url.path)
        return nxt(request)  # type: ignore[no-any-return]

    async def async_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        self.paths.append(request.url.path)
        return await nxt(request)  # type: ignore[no-any-return]

    @property
    def models(self) -> list[str]:
        return [p for p in self.paths if p.endswith("/model")]


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A coordinator with one task of one-device rounds of SPEC's model: (url, task id)."""
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        with httpx.Client(base_url=url) as admin:
            one = task_config(clients_per_round=1, rounds=3, selection_timeout_s=0.2, deadline_s=20)
            task = create_task(admin, one)
        yield url, task


def _participate(
    url: str, root: Path, task: int, seen: _Requests, asynchronous: bool, **kwargs: Any
) -> Any:
    """One `participate` of task `task` by a client made with `kwargs`."""
    if not asynchronous:
        with Client(url, str(root), mods=(seen.sync_mod,), **kwargs) as client:
            client.register()
            return client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)

    async def run() -> Any:
        async with AsyncClient(url, str(root), mods=(seen.async_mod,), **kwargs) as client:
            await client.register()
            return await client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)

    return asyncio.run(run())


@MODES
def test_a_model_over_the_cap_is_refused_before_any_request_for_it(
    coordinator: tuple[str, int], tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare
    url, task = coordinator
    seen = _Requests()
    # Execute
    with pytest.raises(ModelTooLargeError) as caught:
        _participate(url, tmp_path / "dev", task, seen, asynchronous, max_model_bytes=679)
    # Assert: named, with the cap and the declared size; no model asked for, nothing held. The
    # coordinator, told the cap at the check-in, refuses the task itself (409, its detail
    # naming the size: test_h212_model_cap_checkin); the client's own check (status 0,
    # `declared` set) is for a coordinator before that: the hostile-coordinator tests below
    err = caught.value
    assert isinstance(err, ClientError) and (err.status, err.reason) == (409, MODEL_TOO_LARGE)
    assert (err.task_id, err.declared, err.limit) == (task, None, 679)
    assert "680 bytes" in str(err) and "max_model_bytes=679" in str(err)
    assert seen.models == [] and "/v1/checkin" in seen.paths
    store = DeviceStore(tmp_path / "dev")
    assert store.load_model(task, SPEC.size) is None
    assert store.load_residual(SPEC.size, task) is None and store.load_pending() is None


@MODES
def test_a_model_at_the_cap_is_downloaded(
    coordinator: tuple[str, int], tmp_path: Path, asynchronous: bool
) -> None:
    url, task = coordinator
    seen = _Requests()

    report = _participate(url, tmp_path / "dev", task, seen, asynchronous, max_model_bytes=680)

    assert report is not None and report.receipt.accepted
    assert len(seen.models) == 1


def test_a_held_model_over_a_lower_cap_is_not_asked_for_even_as_a_delta_chain(
    coordinator: tuple[str, int], tmp_path: Path
) -> None:
    # Prepare: a round done under the default cap, so the device holds the task's model and
    # its next download would be a delta chain from it (`have=`)
    url, task = coordinator
    root = tmp_path / "dev"
    assert _participate(url, root, task, _Requests(), False) is not None
    seen = _Requests()
    # Execute: the app lowers the cap below the model
    with Client(url, str(root), mods=(seen.sync_mod,), max_model_bytes=512) as client:
        with pytest.raises(ModelTooLargeError) as caught:
            client.fetch_current(task, SPEC)
    # Assert: refused before the request; the model held is kept
    assert (caught.value.declared, caught.value.limit) == (680, 512)
    assert seen.paths == []
    assert DeviceStore(root).load_model(task, SPEC.size) is not None


# A coordinator (hostile or broken) assigning a model of 2^31 parameters, the most a spec may
# declare: 8 GiB. Its model answers are counted, never served.
_HUGE = [TensorShape("w", [1 << 31])]


def _assignment(secure: bool = False) -> Assignment:
    return Assignment(
        task_id=3, round_id=9, base_version=0, model_name="m", spec=_HUGE,
        codec=CodecParams(topk=0.01, bits=8), training=TrainingParams(1, 4, 0.1),
        deadline_unix=time.time() + 600, model_path="/v1/tasks/3/model",
        upload_path="/v1/rounds/9/updates", max_upload_bytes=1 << 40, seed=0, secure=secure,
    )  # fmt: skip


class _Hostile:
    def __init__(self) -> None:
        self.models = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/checkin":
            answer = CheckInResponse("train", 0.0, _assignment())
            return httpx.Response(200, content=json.dumps(to_json(answer)).encode())
        self.models += 1
        return httpx.Response(404, json={"reason": "not_found", "detail": "never asked"})


class _Trainer:
    """A `LocalTrainer` that tells no layout (no `spec`, no `module`)."""

    def train(self, params: Any, x: Any, y: Any, **kwargs: Any) -> Any:
        raise AssertionError("never reached")


@MODES
def test_a_coordinator_declaring_a_huge_model_gets_no_download_request(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare
    hostile = _Hostile()
    # Execute: the default cap
    if not asynchronous:
        with Client("http://c", str(tmp_path), transport=httpx.MockTransport(hostile)) as c:
            with pytest.raises(ModelTooLargeError) as caught:
                c.participate(_Trainer(), X, Y, task_id=3, max_wait_s=5)
    else:

        async def run() -> None:
            transport = httpx.MockTransport(hostile)
            async with AsyncClient("http://c", str(tmp_path), transport=transport) as c:
                await c.participate(_Trainer(), X, Y, task_id=3, max_wait_s=5)

        with pytest.raises(ModelTooLargeError) as caught:
            asyncio.run(run())
    # Assert
    assert hostile.models == 0
    assert (caught.value.declared, caught.value.limit) == (1 << 33, MAX_MODEL_BYTES)
    assert MAX_MODEL_BYTES == 256 << 20


@MODES
def test_a_secure_round_of_a_huge_model_is_refused_before_any_request(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: a secure assignment, an `update` (no trainer, so no layout to compare)
    hostile = _Hostile()
    a = _assignment(secure=True)

    def update(params: np.ndarray) -> tuple[np.ndarray, int, float]:
        raise AssertionError("never reached")

    # Execute
    if not asynchronous:
        with Client("http://c", str(tmp_path), transport=httpx.MockTransport(hostile)) as c:
            with pytest.raises(ModelTooLargeError):
                c.secure_round(a, update)
    else:

        async def run() -> None:
            transport = httpx.MockTransport(hostile)
            async with AsyncClient("http://c", str(tmp_path), transport=transport) as c:
                await c.secure_round(a, update)

        with pytest.raises(ModelTooLargeError):
            asyncio.run(run())
    # Assert
    assert hostile.models == 0


@pytest.mark.parametrize("bad", [0, 3, -1, True, 1.5, "256"])
@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_max_model_bytes_must_be_an_integer_of_at_least_one_parameter(
    tmp_path: Path, bad: Any, cls: Any
) -> None:
    with pytest.raises(ValueError, match="max_model_bytes"):
        cls("http://c", str(tmp_path / "app"), max_model_bytes=bad)
    assert not (tmp_path / "app").exists()  # refused before the app directory is made


def test_the_error_survives_pickling_whole() -> None:
    # A ClientError raised in a process pool's worker is pickled back to the app
    err = ModelTooLargeError(3, 1 << 33, 1 << 28)

    again = pickle.loads(pickle.dumps(err))

    assert type(again) is ModelTooLargeError and str(again) == str(err)
    assert (again.task_id, again.declared, again.limit, again.reason) == (
        3, 1 << 33, 1 << 28, MODEL_TOO_LARGE,
    )  # fmt: skip
