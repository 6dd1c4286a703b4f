"""A delta chain that fails its integrity check is asked for again once, in the same call, as a
snapshot (no `have=`), so the round is not lost; a snapshot that fails is still
`ModelIntegrityError`, with no second request (helper-174's review). Before, the corrupt chain
failed the whole `participate` with `ModelIntegrityError` and forgot the held model, and only
the next call recovered (with a snapshot)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from compression import ModelSpec
from coordinator.service import ServerThread, ServiceConfig
from protocol.names import Header, ModelEncoding
from sdk import AsyncClient, Client, ModelIntegrityError
from tests.coordinator.test_service_support import (
    ADMIN,
    SHAPES,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
)

X, Y = local_data(0)
MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


class _Corrupter:
    """Flips a byte near the end of model bodies of the encodings in `encodings` (while
    `on`), and records the encoding of every model answer that passes."""

    def __init__(self, *encodings: str) -> None:
        self.encodings = set(encodings)
        self.on = False
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if "/model" not in request.url.path or response.status_code != 200:
            return response
        encoding = response.headers.get(str(Header.MODEL_ENCODING), "")
        self.seen.append(encoding)
        if not (self.on and encoding in self.encodings):
            return response
        body = bytearray(response.content)
        body[-5] ^= 0xFF
        return httpx.Response(
            response.status_code, headers=response.headers, content=bytes(body), request=request
        )

    def sync_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        return self(request, nxt(request))

    async def async_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        return self(request, await nxt(request))


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A coordinator with one task of 3 one-device rounds: (url, task id)."""
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        with httpx.Client(base_url=url) as admin:
            task = create_task(
                admin,
                task_config(clients_per_round=1, rounds=3, selection_timeout_s=0.2, deadline_s=20),
            )
        yield url, task


def _two_rounds(
    url: str, root: Path, task: int, corrupter: _Corrupter, asynchronous: bool
) -> tuple[Any, Any]:
    """Round 1 (a snapshot: nothing held), then round 2 with `corrupter` on."""
    if not asynchronous:
        with Client(url, str(root), mods=(corrupter.sync_mod,)) as client:
            client.register()
            first = client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
            corrupter.on = True
            return first, client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)

    async def run() -> tuple[Any, Any]:
        async with AsyncClient(url, str(root), mods=(corrupter.async_mod,)) as client:
            await client.register()
            first = await client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
            corrupter.on = True
            second = await client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
            return first, second

    return asyncio.run(run())


@MODES
def test_a_corrupt_delta_chain_is_fetched_again_as_a_snapshot_in_the_same_round(
    coordinator: tuple[str, int], tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare
    url, task = coordinator
    corrupter = _Corrupter(ModelEncoding.DELTA_CHAIN)
    # Execute
    first, second = _two_rounds(url, tmp_path / "dev", task, corrupter, asynchronous)
    # Assert: round 2 got a chain (corrupted), then a snapshot, and was done
    assert first is not None and first.download_encoding == ModelEncoding.SNAPSHOT
    assert second is not None and second.round_id == first.round_id + 1
    assert second.receipt.accepted
    assert second.download_encoding == ModelEncoding.SNAPSHOT
    assert corrupter.seen == [
        ModelEncoding.SNAPSHOT, ModelEncoding.DELTA_CHAIN, ModelEncoding.SNAPSHOT
    ]  # fmt: skip


@MODES
def test_a_corrupt_snapshot_is_still_a_model_integrity_error(
    coordinator: tuple[str, int], tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: every model body corrupted from round 2 on
    url, task = coordinator
    corrupter = _Corrupter(ModelEncoding.DELTA_CHAIN, ModelEncoding.SNAPSHOT)
    # Execute
    with pytest.raises(ModelIntegrityError):
        _two_rounds(url, tmp_path / "dev", task, corrupter, asynchronous)
    # Assert: the chain, then one snapshot, no third request
    assert corrupter.seen == [
        ModelEncoding.SNAPSHOT, ModelEncoding.DELTA_CHAIN, ModelEncoding.SNAPSHOT
    ]  # fmt: skip


def test_fetch_current_falls_back_to_a_snapshot_in_the_same_call(
    coordinator: tuple[str, int], tmp_path: Path
) -> None:
    # Prepare: a round done, so the device holds a model the coordinator can chain from.
    # Outside a round too, a corrupt chain is asked for again as a snapshot in the same call
    # (662349d; before, fetch_current raised and only its next call got a snapshot).
    url, task = coordinator
    corrupter = _Corrupter(ModelEncoding.DELTA_CHAIN)
    spec = ModelSpec.from_shapes(SHAPES)
    with Client(url, str(tmp_path / "dev"), mods=(corrupter.sync_mod,)) as client:
        client.register()
        assert client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
        corrupter.on = True
        # Execute
        params, _, encoding = client.fetch_current(task, spec)
    # Assert
    assert encoding == ModelEncoding.SNAPSHOT and params.size == spec.size
    assert corrupter.seen[-2:] == [ModelEncoding.DELTA_CHAIN, ModelEncoding.SNAPSHOT]


def test_a_secure_round_falls_back_to_a_snapshot_too(tmp_path: Path) -> None:
    # Prepare: a secure task of 3 devices (tests/sdk/test_client_secure.py's). Its coordinator
    # answers with snapshots (a dense fp32 chain is not smaller), so device 0's mod turns the
    # answer to a download from a held version (`have=`) into a delta chain that is garbage.
    from .test_client_secure import ShiftTrainer, _data, _in_threads, server

    fixture = getattr(server, "__wrapped__", None)
    assert fixture is not None
    served = fixture(tmp_path)
    url, task = next(served)
    turned: list[str] = []

    def chain_garbage(request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        response: httpx.Response = nxt(request)
        if "/model" not in request.url.path or "have" not in request.url.params:
            return response
        turned.append(request.url.params["have"])
        headers = dict(response.headers)
        headers[str(Header.MODEL_ENCODING)] = str(ModelEncoding.DELTA_CHAIN)
        return httpx.Response(200, headers=headers, content=b"not a chain", request=request)

    clients = [
        Client(url, str(tmp_path / f"d{i}"), mods=(chain_garbage,) if i == 0 else ())
        for i in range(3)
    ]
    try:
        for c in clients:
            c.register()
        x, y = _data()
        # Execute: two rounds; in the second, device 0 holds round 1's model
        rounds = [
            _in_threads(
                [
                    lambda c=c, i=i: c.participate(ShiftTrainer(0.01 * (i + 1)), x, y, task_id=task)
                    for i, c in enumerate(clients)
                ]
            )
            for _ in range(2)
        ]
    finally:
        for c in clients:
            c.close()
        served.close()
    # Assert: device 0's second round was asked with have=, refused it, and completed
    assert turned == ["0"]  # the initial model (version 0), held since round 1
    last = rounds[1][0]
    assert last is not None and getattr(last, "completed", False)
    assert getattr(last, "download_encoding", None) == ModelEncoding.SNAPSHOT
