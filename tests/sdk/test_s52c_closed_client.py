"""A call on a `Client` after `close()` (an app that keeps the client past its `with` block)
raises `ValueError` naming the fix, a new Client, before any request; so does a store
inherited across a fork, in the child."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sdk import Client
from sdk.device_store import DeviceStore


class _Trainer:
    def train(self, params: Any, x: Any, y: Any, **_: Any) -> Any:
        raise AssertionError("never trained")


def test_calls_on_a_closed_client_name_the_fix_before_any_request(tmp_path: Path) -> None:
    # Prepare
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(500)

    with Client(
        "http://coordinator", tmp_path / "app", transport=httpx.MockTransport(handler)
    ) as c:
        pass
    x, y = np.zeros((2, 4), np.float32), np.zeros(2, np.int64)

    # Execute / Assert
    for call in (
        c.register,
        lambda: c.check_in(1),
        lambda: c.participate(_Trainer(), x, y, task_id=1, max_wait_s=1),
        c.resume_pending,
    ):
        with pytest.raises(ValueError, match="is closed .*: make a new Client") as caught:
            call()
        assert str(tmp_path / "app") in str(caught.value)
    assert requests == []


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_a_store_used_in_a_forked_child_names_the_fix(tmp_path: Path) -> None:
    # Prepare
    store = DeviceStore(tmp_path)
    read, write = os.pipe()

    # Execute: the child reports what using the inherited store raised
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            store.state()
            message = "no error"
        except ValueError as exc:
            message = str(exc)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    message = os.read(read, 4096).decode()
    os.close(read)
    store.close()

    # Assert
    assert status == 0
    assert "(opened before a fork): make a new Client (or DeviceStore) in this process" in message
