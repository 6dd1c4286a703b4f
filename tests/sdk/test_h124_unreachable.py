"""`sdk.CoordinatorUnreachable`: every call of `Client` and `AsyncClient` that runs out of
attempts against a refused port or a server that closes the connection raises one error that
is both a `ClientError` and the `httpx.TransportError` it was before (its very class: a
`ConnectError` stays one), with the same message and request, chained to httpx's own error.
Before, it was an `httpx.TransportError` only, which `except ClientError` missed; and a pending
upload's re-send (`resume_pending`) must not take it for a refusal."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import sdk
from sdk import AsyncClient, Client, ClientError, CoordinatorUnreachable
from sdk.client import UNREACHABLE, ParticipationCancelled
from tests.coordinator.test_service_support import refused_url

from .test_client import SPEC
from .test_h51_task_residuals import _task
from .test_h61_inflight import SecureFake, secure_task
from .test_h61_parity import PlainFake, _Trainer

X, Y = np.zeros((8, 2), np.float32), np.zeros(8, np.int64)
KINDS = ["refused", "closed"]


@pytest.fixture
def refused() -> Iterator[str]:
    """A loopback URL nothing listens at, its port held (bound, not listening) while the test
    runs so that no other process's server can take it (test_service_support.refused_url)."""
    with refused_url() as url:
        yield url


@contextlib.contextmanager
def _dead(kind: str) -> Iterator[int]:
    """A loopback port that refuses connections ("refused") or accepts each one and closes it
    at once, answering nothing ("closed")."""
    if kind == "refused":
        with refused_url() as url:
            yield int(url.rsplit(":", 1)[1])
        return
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


class _Route(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """A scripted coordinator (`fake`, a MockTransport handler) except for the requests `dead`
    picks: those go to the real network at `port` on loopback (same method and path)."""

    def __init__(
        self,
        fake: Callable[[httpx.Request], httpx.Response],
        dead: Callable[[httpx.Request], bool],
        port: int,
    ) -> None:
        self.fake, self.dead, self.port = fake, dead, port
        self.sync, self.aio = httpx.HTTPTransport(), httpx.AsyncHTTPTransport()

    def _away(self, request: httpx.Request) -> bool:
        if not self.dead(request):
            return False
        request.url = request.url.copy_with(host="127.0.0.1", port=self.port)
        return True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._away(request):
            return self.sync.handle_request(request)
        request.read()
        return self.fake(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._away(request):
            return await self.aio.handle_async_request(request)
        await request.aread()
        return self.fake(request)

    def close(self) -> None:
        self.sync.close()

    async def aclose(self) -> None:
        await self.aio.aclose()


def _path(part: str, method: str | None = None, after: int = 0) -> Callable[[httpx.Request], bool]:
    """Requests whose path holds `part` (and of `method`, if given), past the first `after`."""
    seen = [0]

    def dead(request: httpx.Request) -> bool:
        if part not in request.url.path or method not in (None, request.method):
            return False
        seen[0] += 1
        return seen[0] > after

    return dead


def _nothing(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request should reach the fake: {request.url.path}")


@dataclass
class Case:
    """One public call: `run(client, root)` (sync) and `arun` (async), the coordinator's fake
    (None: every request goes to the dead port) and which requests are dead."""

    run: Callable[[Client, Path], Any]
    arun: Callable[[AsyncClient, Path], Any]
    fake: Callable[[], Callable[[httpx.Request], httpx.Response]] | None = None
    dead: Callable[[], Callable[[httpx.Request], bool]] = lambda: lambda r: True
    at: str = ""  # what the path of the request that failed holds


def _plain(round_id: int = 5) -> Any:
    return replace(_task(1, round_id), deadline_unix=4e9)


def _encoded(client: Client | AsyncClient, round_id: int = 4) -> Any:
    """A pending upload for `round_id` in the client's app directory, as an app left offline."""
    params = np.zeros(SPEC.size, np.float32)
    return client.encode_update(_plain(round_id), params, params + 0.25, 8)


def _update(p: Any) -> tuple[Any, int, float]:
    return np.full(SPEC.size, 0.1, np.float32), 8, 0.0


CASES: dict[str, Case] = {
    "register": Case(lambda c, r: c.register(), lambda c, r: c.register()),
    "check_in": Case(lambda c, r: c.check_in(1), lambda c, r: c.check_in(1)),
    "fetch_current": Case(
        lambda c, r: c.fetch_current(1, SPEC), lambda c, r: c.fetch_current(1, SPEC)
    ),
    "fetch_model": Case(lambda c, r: c.fetch_model(_plain()), lambda c, r: c.fetch_model(_plain())),
    "upload": Case(lambda c, r: c.upload(_encoded(c)), lambda c, r: c.upload(_encoded(c))),
    # Before, its `except ClientError` would have swallowed the new error: it must not.
    "resume_pending": Case(
        lambda c, r: (_encoded(c), c.resume_pending()),
        lambda c, r: _then(_encoded(c), c.resume_pending()),
        at="/v1/rounds/4/updates",
    ),
    "participate: check-in": Case(
        lambda c, r: c.participate(_Trainer(), X, Y, task_id=1),
        lambda c, r: c.participate(_Trainer(), X, Y, task_id=1),
    ),
    "participate: re-send": Case(
        lambda c, r: (_encoded(c), c.participate(_Trainer(), X, Y, task_id=1)),
        lambda c, r: _then(_encoded(c), c.participate(_Trainer(), X, Y, task_id=1)),
        at="/v1/rounds/4/updates",
    ),
    "participate: model": Case(
        lambda c, r: c.participate(_Trainer(), X, Y, task_id=1),
        lambda c, r: c.participate(_Trainer(), X, Y, task_id=1),
        lambda: PlainFake(["committed"]),
        lambda: _path("/model"),
    ),
    "participate: upload": Case(
        lambda c, r: c.participate(_Trainer(), X, Y, task_id=1),
        lambda c, r: c.participate(_Trainer(), X, Y, task_id=1),
        lambda: PlainFake(["committed"]),
        lambda: _path("/updates"),
    ),
    "participate: check-in after a wait": Case(
        lambda c, r: c.participate(_Trainer(), X, Y, task_id=1),
        lambda c, r: c.participate(_Trainer(), X, Y, task_id=1),
        lambda: _Waits(),
        lambda: _path("/v1/checkin", after=1),
    ),
    "train_round: model": Case(
        lambda c, r: c.train_round(_plain(), _Trainer(), X, Y),
        lambda c, r: c.train_round(_plain(), _Trainer(), X, Y),
        lambda: PlainFake(["committed"]),
        lambda: _path("/model"),
    ),
    "train_round: upload": Case(
        lambda c, r: c.train_round(_plain(), _Trainer(), X, Y),
        lambda c, r: c.train_round(_plain(), _Trainer(), X, Y),
        lambda: PlainFake(["committed"]),
        lambda: _path("/updates"),
    ),
    "train_round: earlier pending": Case(
        lambda c, r: (_encoded(c), c.train_round(_plain(), _Trainer(), X, Y)),
        lambda c, r: _then(_encoded(c), c.train_round(_plain(), _Trainer(), X, Y)),
        lambda: PlainFake(["committed"]),
        lambda: _path("/v1/rounds/4/"),
    ),
    "secure_round: model": Case(
        lambda c, r: c.secure_round(secure_task(1, 101), _update),
        lambda c, r: c.secure_round(secure_task(1, 101), _update),
        lambda: SecureFake(),
        lambda: _path("/model"),
    ),
    "secure_round: setup": Case(
        lambda c, r: c.secure_round(secure_task(1, 101), _update),
        lambda c, r: c.secure_round(secure_task(1, 101), _update),
        lambda: SecureFake(),
        lambda: _path("/setup"),
    ),
    "secure_round: stage upload": Case(
        lambda c, r: c.secure_round(secure_task(1, 101), _update),
        lambda c, r: c.secure_round(secure_task(1, 101), _update),
        lambda: SecureFake(),
        lambda: _path("/stages/", "POST", after=1),
    ),
    "secure_round: stage poll": Case(
        lambda c, r: c.secure_round(secure_task(1, 101), _update),
        lambda c, r: c.secure_round(secure_task(1, 101), _update),
        lambda: SecureFake(),
        lambda: _path("/stages/", "GET", after=1),
    ),
    "run_secure_round: masked input": Case(
        lambda c, r: c.run_secure_round(secure_task(1, 101), _Trainer(), X, Y),
        lambda c, r: c.run_secure_round(secure_task(1, 101), _Trainer(), X, Y),
        lambda: SecureFake(),
        lambda: _path("/masked", "POST"),
    ),
}


async def _then(first: Any, call: Any) -> Any:
    return await call


class _Waits:
    """A coordinator that answers every check-in "wait 0 s" (the route kills the second)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/checkin", request.url.path
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 0.0})


def _raised(case: Case, kind: str, root: Path, asynchronous: bool) -> tuple[BaseException, str]:
    """What `case` raised against a dead port of `kind`, and the client's base URL."""
    with _dead(kind) as port:
        if case.fake is None:
            base, kw = f"http://127.0.0.1:{port}", {}
        else:
            base = "http://coord"
            kw = {"transport": _Route(case.fake(), case.dead(), port)}
        kw |= {"retries": 1, "backoff_s": 0.0, "timeout": 5.0}
        if not asynchronous:
            with Client(base, str(root), **kw) as client, pytest.raises(Exception) as info:
                case.run(client, root)
            return info.value, base

        async def run() -> None:
            async with AsyncClient(base, str(root), **kw) as client:
                await case.arun(client, root)

        with pytest.raises(Exception) as info:
            asyncio.run(run())
        return info.value, base


@pytest.mark.timeout(30)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_every_call_raises_one_error_that_is_both_families(
    tmp_path: Path, name: str, kind: str, asynchronous: bool
) -> None:
    # Execute: the call runs out of its two attempts
    exc, base = _raised(CASES[name], kind, tmp_path / "app", asynchronous)

    # Assert: one error, both families, httpx's own class kept, chained to httpx's error
    assert isinstance(exc, CoordinatorUnreachable), repr(exc)
    assert isinstance(exc, ClientError) and isinstance(exc, httpx.TransportError)
    cause = exc.__cause__
    assert isinstance(cause, httpx.TransportError) and not isinstance(cause, ClientError)
    assert isinstance(exc, type(cause))  # `except httpx.ConnectError` still catches it
    if kind == "refused":
        assert isinstance(exc, httpx.ConnectError)
    # The message is the one the SDK gave before, and it names the request sent
    request = exc.request
    what = "could not reach" if kind == "refused" else "lost the connection to"
    reason = str(cause) or type(cause).__name__
    assert str(exc) == (
        f"{what} the coordinator at {base} for {request.method} {request.url.path} "
        f"in 2 attempts: {reason}"
    )
    assert exc.args == (str(exc),)
    assert (exc.status, exc.reason, exc.detail) == (0, UNREACHABLE, str(exc))
    assert type(exc).__name__ == "CoordinatorUnreachable"
    assert CASES[name].at in request.url.path


def test_the_name_is_exported_and_both_families_catch_it() -> None:
    assert "CoordinatorUnreachable" in sdk.__all__
    assert sdk.CoordinatorUnreachable is CoordinatorUnreachable
    assert issubclass(CoordinatorUnreachable, ClientError)
    assert issubclass(CoordinatorUnreachable, httpx.TransportError)
    request = httpx.Request("POST", "http://coord/v1/checkin")
    err = CoordinatorUnreachable("could not reach the coordinator", request=request)
    assert err.request is request and str(err) == "could not reach the coordinator"


def test_a_resend_that_cannot_reach_the_coordinator_keeps_the_upload_pending(
    tmp_path: Path, refused: str
) -> None:
    # Prepare: an upload left pending, and no coordinator
    url = refused
    with Client(url, str(tmp_path / "app"), retries=0, backoff_s=0.0) as client:
        pending = _encoded(client)

        # Execute: the re-send fails, not taken for a refusal
        with pytest.raises(CoordinatorUnreachable):
            client.resume_pending()

        # Assert: still pending, unchanged
        kept = client._core.store.load_pending()
    assert kept is not None and (kept.key, kept.frame) == (pending.key, pending.frame)


class _MyTransportError(httpx.TransportError):
    """An app transport's own error whose constructor httpx's cannot call."""

    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")


@pytest.mark.parametrize(
    "raised", [_MyTransportError(7), httpx.ReadTimeout("slow"), httpx.TransportError("")]
)
def test_an_app_transports_error_becomes_coordinator_unreachable(
    tmp_path: Path, raised: httpx.TransportError
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    transport = httpx.MockTransport(handler)
    with Client("http://coord", str(tmp_path / "app"), transport=transport, retries=0) as client:
        with pytest.raises(CoordinatorUnreachable) as info:
            client.check_in()
    exc = info.value
    assert exc.__cause__ is raised and isinstance(exc, httpx.TransportError)
    if not isinstance(raised, _MyTransportError):  # httpx's own class is kept
        assert isinstance(exc, type(raised))
    assert re.fullmatch(
        r"lost the connection to the coordinator at http://coord for POST /v1/checkin in "
        r"1 attempt: .+",
        str(exc),
    ), str(exc)


def _cancelling(stop: threading.Event) -> httpx.MockTransport:
    """A coordinator that cannot be reached, and the app's cancel set as the attempt fails."""

    def handler(request: httpx.Request) -> httpx.Response:
        stop.set()
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    return httpx.MockTransport(handler)


def test_a_cancel_during_a_failed_attempt_is_still_a_cancel(tmp_path: Path) -> None:
    stop = threading.Event()
    with Client("http://coord", str(tmp_path / "app"), transport=_cancelling(stop)) as client:
        with pytest.raises(ParticipationCancelled) as info:
            client.participate(_Trainer(), X, Y, task_id=1, cancel=stop)
    assert info.value.phase == "check-in"
    assert not isinstance(info.value, httpx.TransportError)


def test_an_async_cancel_during_a_failed_attempt_is_still_a_cancel(tmp_path: Path) -> None:
    stop = threading.Event()

    async def run() -> None:
        transport = _cancelling(stop)
        async with AsyncClient("http://coord", str(tmp_path / "app"), transport=transport) as c:
            await c.participate(_Trainer(), X, Y, task_id=1, cancel=stop)

    with pytest.raises(ParticipationCancelled) as info:
        asyncio.run(run())
    assert info.value.phase == "check-in"
    assert not isinstance(info.value, httpx.TransportError)


def test_asyncio_cancellation_while_retrying_a_refused_port_is_a_cancellation(
    tmp_path: Path, refused: str
) -> None:
    # Prepare: retries with long waits between them, so the task is cancelled mid-wait
    url = refused

    async def run() -> None:
        async with AsyncClient(url, str(tmp_path / "app"), retries=3, backoff_s=30.0) as client:
            task = asyncio.create_task(client.check_in())
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
