"""An app directory deleted (or moved away) under an open client is the store's error, at every
later use (s45 review, item 1). Before, `DeviceStore.root` returned the path when `stat` found
nothing there, so each later `participate` raised a raw `FileNotFoundError` from the store's
first listing, for ever, while the docs' `OSError` row said "call again later"; a replaced
directory already gave `DeviceStoreError`. Nothing is sent either way."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from sdk import AsyncClient, Client, TrainResult
from sdk.device_store import DeviceStore, DeviceStoreError

X, Y = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)
GONE = "the app directory no longer exists"


class _NeverTrains:
    def train(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, **_: object) -> TrainResult:
        raise AssertionError("nothing is trained")


class _Counting:
    """A coordinator that never assigns a round, counting the requests it got."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 30.0})


@pytest.mark.parametrize("how", ["deleted", "moved away"])
def test_participate_on_a_deleted_app_dir_raises_the_stores_error_every_time(
    tmp_path: Path, how: str
) -> None:
    # Prepare: an open client whose app directory is then deleted (or renamed elsewhere)
    app, coordinator = tmp_path / "app", _Counting()
    with Client("http://coord", str(app), transport=httpx.MockTransport(coordinator)) as client:
        if how == "deleted":
            shutil.rmtree(app)
        else:
            app.rename(tmp_path / "elsewhere")

        # Execute / Assert: each call is refused the same way, naming the path, with no request
        for _ in range(2):
            with pytest.raises(DeviceStoreError, match=GONE) as caught:
                client.participate(_NeverTrains(), X, Y, task_id=1, max_wait_s=0.5)
            assert str(app) in str(caught.value) and "close" in str(caught.value)
        with pytest.raises(DeviceStoreError, match=GONE):
            client.register()
        assert coordinator.requests == 0
    # The directory is not made again behind the app's back
    assert not app.exists()

    # A new client on the path starts over in a fresh directory
    with Client("http://coord", str(app), transport=httpx.MockTransport(coordinator)) as again:
        assert again.participate(_NeverTrains(), X, Y, task_id=1, max_wait_s=0.2) is None
    assert app.is_dir()


def test_the_async_client_and_a_plain_store_say_so_too(tmp_path: Path) -> None:
    app = tmp_path / "app"

    async def run() -> None:
        async def wait(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"action": "wait", "retry_after_s": 30.0})

        async with AsyncClient("http://coord", str(app), transport=httpx.MockTransport(wait)) as c:
            shutil.rmtree(app)
            with pytest.raises(DeviceStoreError, match=GONE):
                await c.participate(_NeverTrains(), X, Y, task_id=1, max_wait_s=0.5)

    asyncio.run(run())

    with DeviceStore(app) as store:
        store.update_state(round=2)
        shutil.rmtree(app)
        with pytest.raises(DeviceStoreError, match=GONE):
            store.state()
        with pytest.raises(DeviceStoreError, match=GONE):
            store.update_state(round=3)
    assert not app.exists()
