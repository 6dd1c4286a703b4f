"""HTTP fleet under failures: refused or timed-out requests are dropouts, device bugs fail the run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

import sdk.client
from compression import ModelSpec
from mobile_sim import http_fleet
from mobile_sim.http_fleet import DeviceFailed, HttpFleetOptions, run_http_simulation
from protocol.names import Path

from .test_http_fleet import SMALL_FLEET

_CFG = replace(SMALL_FLEET, min_reports=1)
# The "slow" case's max_response_s, on every request of every device: the registrations
# (whose failure fails the run) answered in at most 0.09 s loaded, and the other requests in at
# most 0.26 s (a late one is a dropout the device retries; helper-321, load 9 on 2 cores).
_SLOW_S = 2.0


class _Faults:
    """Fails chosen requests of every device client: the first check-in of each device (503;
    with `check_in` "refused" a refused connection, "slow" an answer that comes after the
    client's `max_response_s`), the fleet's first model download (read timeout) and its first
    upload (500)."""

    def __init__(self, check_in: str = "503") -> None:
        self.check_in = check_in
        self.checked_in: set[int] = set()
        self.injected = {"check_in": 0, "model": 0, "upload": 0}

    def mod(self, owner: int) -> Callable[[httpx.Request, Any], Awaitable[httpx.Response]]:
        async def inject(request: httpx.Request, send: Any) -> httpx.Response:
            path = request.url.path
            if path == Path.CHECK_IN and self.check_in != "slow" and owner not in self.checked_in:
                self.checked_in.add(owner)
                self.injected["check_in"] += 1
                if self.check_in == "refused":
                    raise httpx.ConnectError("injected", request=request)
                return httpx.Response(503, json={"reason": "overloaded", "detail": "injected"})
            if path.endswith("/model") and not self.injected["model"]:
                self.injected["model"] += 1
                raise httpx.ReadTimeout("injected", request=request)
            if path.endswith("/updates") and not self.injected["upload"]:
                self.injected["upload"] += 1
                return httpx.Response(500, json={"reason": "internal", "detail": "injected"})
            response: httpx.Response = await send(request)
            return response

        return inject


# A refused check-in: sdk.CoordinatorUnreachable, a ClientError with status 0 since 5698a7a,
# stopped every device as a device bug until the fleet told it apart; so did a check-in whose
# answer took longer than max_response_s (status 0, reason too_slow).
class _SlowCheckIn(httpx.AsyncHTTPTransport):
    """A device's transport whose first check-in answer takes twice `_SLOW_S`."""

    def __init__(self, faults: _Faults, owner: int) -> None:
        super().__init__()
        self.faults, self.owner = faults, owner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == Path.CHECK_IN and self.owner not in self.faults.checked_in:
            self.faults.checked_in.add(self.owner)
            self.faults.injected["check_in"] += 1
            await asyncio.sleep(2 * _SLOW_S)
        return await super().handle_async_request(request)


@pytest.mark.parametrize("check_in", ["503", "refused", "slow"])
@pytest.mark.timeout(120)  # before the fix every device died at its first check-in: a hang
def test_refused_and_timed_out_requests_are_dropouts_on_a_loopback_coordinator(
    monkeypatch: pytest.MonkeyPatch, check_in: str
) -> None:
    # Prepare: device clients without their own retries, so every injected failure reaches the
    # fleet; the observer (which only downloads published models) is left alone.
    faults = _Faults(check_in)
    real = sdk.client.AsyncClient

    def client(url: str, app_dir: str, **kw: Any) -> sdk.client.AsyncClient:
        if app_dir.endswith("observer"):
            return real(url, app_dir, **kw)
        owner = int(app_dir.rsplit("-", 1)[1])
        slow: dict[str, Any] = {}
        if check_in == "slow":  # the answer comes inside the client's own time limit's reach
            slow = {"max_response_s": _SLOW_S, "transport": _SlowCheckIn(faults, owner)}
        return real(url, app_dir, retries=0, mods=(faults.mod(owner),), **slow, **kw)

    monkeypatch.setattr(sdk.client, "AsyncClient", client)
    # A round needs one report before its deadline: rounds reached their target of 3 reports
    # in 0.1-0.4 s loaded, so the deadline is generous (and costs nothing when they do).
    opts = HttpFleetOptions(deadline_s=10.0, retry_after_s=0.1)

    # Execute
    result = run_http_simulation(_CFG, progress=False, options=opts)

    # Assert: every fault happened and the run still finished every round. (A device whose
    # download or upload failed checks in again and, still selected, may retry before the
    # deadline, so round 1 has between its one sure report and the full cohort.)
    assert faults.injected == {"check_in": _CFG.clients, "model": 1, "upload": 1}
    assert [r.round for r in result.records] == [1, 2]
    assert all(r.committed and 1 <= r.reports <= _CFG.per_round for r in result.records)
    assert np.all(np.isfinite(result.final_params))


class _FakeClient:
    """A device client whose check-in raises what it is given (then waits forever)."""

    def __init__(self, url: str, app_dir: str, **kw: Any) -> None:
        self.closed = False

    async def register(self) -> str:
        return "dev"

    async def check_in(self, task_id: int) -> Any:
        raise ValueError("a bug in the device code")

    async def aclose(self) -> None:
        self.closed = True


def test_a_device_that_dies_on_a_bug_fails_the_run_instead_of_hanging_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a fleet whose monitor would wait forever (no round ever finishes).
    made: list[_FakeClient] = []

    def client(url: str, app_dir: str, **kw: Any) -> _FakeClient:
        made.append(_FakeClient(url, app_dir))
        return made[-1]

    monkeypatch.setattr(sdk.client, "AsyncClient", client)
    parts = [np.arange(2)] * _CFG.clients
    data = SimpleNamespace(x_train=np.zeros((2, 4), np.float32), y_train=np.zeros(2, np.int64))
    spec = ModelSpec.from_shapes([("w", (4,))])
    fleet = http_fleet._Fleet(_CFG, "http://127.0.0.1:9", 1, spec, "/nonexistent", parts, data,
                              HttpFleetOptions())  # fmt: skip

    async def never(*args: Any) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(fleet, "_monitor", never)

    async def go() -> Any:
        return await asyncio.wait_for(fleet.run(None, None, None, None), 10.0)  # type: ignore[arg-type]

    # Execute / Assert: the device's error, promptly, and every client closed.
    with pytest.raises(DeviceFailed, match="a bug in the device code"):
        asyncio.run(go())
    assert len(made) == _CFG.clients + 1 and all(c.closed for c in made)
