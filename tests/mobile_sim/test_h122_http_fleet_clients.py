"""The HTTP fleet closes every client it made when making a later one fails (AppDirInUse,
"too many open files"): each holds its app directory's lock and an HTTP pool."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import sdk.client
from compression import ModelSpec
from mobile_sim import http_fleet
from mobile_sim.http_fleet import HttpFleetOptions

from .test_http_fleet import SMALL_FLEET


class _Client:
    def __init__(self, app_dir: str) -> None:
        self.app_dir = app_dir
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize("fail_at", [0, 2, SMALL_FLEET.clients])  # first, middle, observer
def test_a_client_that_cannot_be_made_leaves_the_ones_made_before_it_closed(
    monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    # Prepare: making the fail_at-th client (the observer is made last) fails.
    assert SMALL_FLEET.clients > 2
    made: list[_Client] = []

    def client(url: str, app_dir: str, **kw: Any) -> _Client:
        if len(made) == fail_at:
            raise OSError(24, "Too many open files")
        made.append(_Client(app_dir))
        return made[-1]

    monkeypatch.setattr(sdk.client, "AsyncClient", client)
    parts = [np.arange(2)] * SMALL_FLEET.clients
    data = SimpleNamespace(x_train=np.zeros((2, 4), np.float32), y_train=np.zeros(2, np.int64))
    spec = ModelSpec.from_shapes([("w", (4,))])
    fleet = http_fleet._Fleet(SMALL_FLEET, "http://127.0.0.1:9", 1, spec, "/nonexistent",
                              parts, data, HttpFleetOptions())  # fmt: skip

    # Execute
    with pytest.raises(OSError, match="Too many open files"):
        asyncio.run(fleet.run(None, None, None, None))  # type: ignore[arg-type]

    # Assert: every client made before the failure was closed.
    assert len(made) == fail_at
    assert all(c.closed for c in made)
