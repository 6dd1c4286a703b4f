"""docs/devices.md's row "`sdk.DeviceStoreError` naming the app directory itself (... `is no
longer the app directory this store locked ...`)": a client whose `app_dir` is replaced while
it is open (moved away and another directory put at its path) is refused at every later call,
before any request, and writes nothing into the directory now at the path (test_s45 holds the
deleted case through a client; test_h122 the replaced one through a bare store)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from sdk import AsyncClient, Client
from sdk.device_store import DeviceStoreError

from .test_s45_app_dir_deleted import X, Y, _Counting, _NeverTrains

REPLACED = "no longer the app directory this store locked"


def _replace(app: Path) -> None:
    """Move `app` away and put another directory, with a file of the app's own, at its path."""
    app.rename(app.parent / "moved")
    app.mkdir()
    (app / "state.json").write_text("{}")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_replaced_app_dir_is_refused_at_every_call_with_nothing_written(
    tmp_path: Path, kind: str
) -> None:
    # Prepare: an open client, whose directory is then replaced
    app, coordinator = tmp_path / "app", _Counting()
    errors: list[DeviceStoreError] = []

    def calls(client: Client) -> None:
        for call in (
            lambda: client.participate(_NeverTrains(), X, Y, task_id=1, max_wait_s=0.5),
            client.register,
            lambda: client.check_in(1),
        ):
            with pytest.raises(DeviceStoreError, match=REPLACED) as caught:
                call()
            errors.append(caught.value)

    # Execute
    if kind == "sync":
        with Client("http://coord", str(app), transport=httpx.MockTransport(coordinator)) as c:
            _replace(app)
            calls(c)
    else:

        async def run() -> None:
            transport = httpx.MockTransport(coordinator)
            async with AsyncClient("http://coord", str(app), transport=transport) as ac:
                _replace(app)
                for call in (
                    lambda: ac.participate(_NeverTrains(), X, Y, task_id=1, max_wait_s=0.5),
                    ac.register,
                    lambda: ac.check_in(1),
                ):
                    with pytest.raises(DeviceStoreError, match=REPLACED) as caught:
                        await call()
                    errors.append(caught.value)

        asyncio.run(run())
    # Assert: every call refused naming the path, no request, nothing written at the path
    assert len(errors) == 3 and all(str(app) in str(e) for e in errors)
    assert coordinator.requests == 0
    assert sorted(p.name for p in app.iterdir()) == ["state.json"]
    assert (app / "state.json").read_text() == "{}"
