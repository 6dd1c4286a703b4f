"""`fetch_current` (outside any round) treats a delta chain that fails its integrity check as a
round's download does (1f6038f): asked for again once in the same call as a snapshot (no
`have=`); a snapshot that fails is still `ModelIntegrityError`, with no third request. Before,
`fetch_current` raised at once for the chain and forgot the held model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from compression import ModelSpec
from protocol.names import ModelEncoding
from sdk import AsyncClient, Client, ModelIntegrityError
from tests.coordinator.test_service_support import (
    SHAPES,
    SoftmaxTrainer,
    local_data,
)
from tests.sdk.test_h177_chain_fallback import _Corrupter, coordinator  # noqa: F401 (a fixture)

X, Y = local_data(0)
SPEC = ModelSpec.from_shapes(SHAPES)
MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


class _Haves:
    """Records each model request's `have=` (None: a snapshot asked for)."""

    def __init__(self) -> None:
        self.haves: list[str | None] = []

    def note(self, request: httpx.Request) -> None:
        if "/model" in request.url.path:
            self.haves.append(request.url.params.get("have"))

    def sync_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        self.note(request)
        response: httpx.Response = nxt(request)
        return response

    async def async_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        self.note(request)
        response: httpx.Response = await nxt(request)
        return response


def _round_then_fetch_current(
    url: str, root: Path, task: int, corrupter: _Corrupter, haves: _Haves, asynchronous: bool
) -> tuple[Any, int, str]:
    """One round (so a model is held and the coordinator can chain from it), then
    `fetch_current` with `corrupter` on."""
    if not asynchronous:
        with Client(url, str(root), mods=(haves.sync_mod, corrupter.sync_mod)) as client:
            client.register()
            assert client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
            corrupter.on = True
            return client.fetch_current(task, SPEC)

    async def run() -> tuple[Any, int, str]:
        async with AsyncClient(url, str(root), mods=(haves.async_mod, corrupter.async_mod)) as c:
            await c.register()
            assert await c.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
            corrupter.on = True
            return await c.fetch_current(task, SPEC)

    return asyncio.run(run())


@MODES
def test_fetch_current_asks_for_a_snapshot_after_a_corrupt_chain(
    coordinator: tuple[str, int],  # noqa: F811
    tmp_path: Path,
    asynchronous: bool,
) -> None:
    # Prepare
    url, task = coordinator
    corrupter, haves = _Corrupter(ModelEncoding.DELTA_CHAIN), _Haves()
    # Execute
    params, version, encoding = _round_then_fetch_current(
        url, tmp_path / "dev", task, corrupter, haves, asynchronous
    )
    # Assert: the round's snapshot, then fetch_current's chain (corrupted) from the version held,
    # then a snapshot (no have=) in the same call, which it returns
    assert encoding == ModelEncoding.SNAPSHOT and params.size == SPEC.size and version >= 1
    assert corrupter.seen == [
        ModelEncoding.SNAPSHOT, ModelEncoding.DELTA_CHAIN, ModelEncoding.SNAPSHOT
    ]  # fmt: skip
    assert haves.haves[0] is None and haves.haves[1] is not None and haves.haves[2] is None


@MODES
def test_fetch_current_still_raises_for_a_corrupt_snapshot(
    coordinator: tuple[str, int],  # noqa: F811
    tmp_path: Path,
    asynchronous: bool,
) -> None:
    # Prepare: every model body corrupted once the round is done
    url, task = coordinator
    corrupter = _Corrupter(ModelEncoding.DELTA_CHAIN, ModelEncoding.SNAPSHOT)
    haves = _Haves()
    # Execute
    with pytest.raises(ModelIntegrityError):
        _round_then_fetch_current(url, tmp_path / "dev", task, corrupter, haves, asynchronous)
    # Assert: the chain, then one snapshot, no third request
    assert corrupter.seen == [
        ModelEncoding.SNAPSHOT, ModelEncoding.DELTA_CHAIN, ModelEncoding.SNAPSHOT
    ]  # fmt: skip
    assert haves.haves[1] is not None and haves.haves[2] is None
