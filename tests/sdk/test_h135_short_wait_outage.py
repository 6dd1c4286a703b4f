"""`participate` with a short `max_wait_s` (one that fits the OS's background window): an
outage is `CoordinatorUnreachable`, never None. Before, the default retries' backoff (0.2 +
0.4 + 0.8 + 1.6 s) ran past a wait under ~3 s, the wait ended and the call returned None with
`last_check_in` left from an earlier call ("not selected yet" from before the outage), or None
on a new client, whose `.detail` the docs tell apps to read. A None return now always comes
with `last_check_in` being this call's last answer (None: no check-in of this call was
answered, e.g. the coordinator said 503 for the whole wait)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdk import AsyncClient, Client, ClientError, CoordinatorUnreachable

from .test_h61_parity import _Trainer
from .test_h124_unreachable import X, Y, _dead, _encoded, _path, _Route


def _waits(detail: str, retry_after_s: float) -> Callable[[httpx.Request], httpx.Response]:
    """A coordinator answering every check-in "wait `retry_after_s`" with `detail`."""

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/checkin", request.url.path
        return httpx.Response(
            200, json={"action": "wait", "retry_after_s": retry_after_s, "detail": detail}
        )

    return answer


def _run(asynchronous: bool, base: str, root: Path, kw: dict[str, Any], calls: Any) -> Any:
    """`calls(client, participate)` with a `Client` (its result) or an `AsyncClient`: then
    `participate(**k)` is the call's coroutine and `calls` returns one or a list of
    coroutines, awaited in order on one event loop."""
    if not asynchronous:
        with Client(base, str(root), **kw) as client:
            return calls(client, lambda **k: client.participate(_Trainer(), X, Y, **k))

    async def main() -> list[Any]:
        async with AsyncClient(base, str(root), **kw) as client:
            script = calls(client, lambda **k: client.participate(_Trainer(), X, Y, **k))
            return [await step for step in (script if isinstance(script, list) else [script])]

    return asyncio.run(main())


MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


@pytest.mark.timeout(20)
@MODES
def test_refused_port_with_a_short_wait_raises(tmp_path: Path, asynchronous: bool) -> None:
    # Setup: nothing listens; the default retries (4, backoff 0.2 s doubling) outlast 1 s
    with _dead("refused") as port:
        base = f"http://127.0.0.1:{port}"

        # Execute
        with pytest.raises(CoordinatorUnreachable) as info:
            _run(asynchronous, base, tmp_path / "app", {}, lambda c, p: p(max_wait_s=1.0))

    # Assert: built as the one after the retries, with the attempts made so far
    exc = info.value
    assert isinstance(exc, ClientError) and isinstance(exc, httpx.ConnectError)
    assert isinstance(exc.__cause__, httpx.ConnectError)
    assert not isinstance(exc.__cause__, ClientError)
    text = str(exc)
    assert text.startswith(f"could not reach the coordinator at {base} for POST /v1/checkin in ")
    attempts = int(text.split(" in ")[1].split(" attempt")[0])
    assert 1 <= attempts <= 4, text


@pytest.mark.timeout(20)
@MODES
def test_an_outage_after_not_selected_yet_raises_not_the_stale_answer(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Setup: the first check-in answers "not selected yet, wait 5 s"; every later one goes to
    # a refused port
    with _dead("refused") as port:
        route = _Route(_waits("not selected yet", 5.0), _path("/v1/checkin", after=1), port)
        kw = {"transport": route}
        seen: list[Any] = []

        def calls(client: Any, participate: Any) -> Any:
            if not asynchronous:
                first = participate(max_wait_s=1.0)
                seen.append((first, client.last_check_in))
                return participate(max_wait_s=1.0)

            async def first() -> None:
                seen.append((await participate(max_wait_s=1.0), client.last_check_in))

            return [first(), participate(max_wait_s=1.0)]

        # Execute
        with pytest.raises(CoordinatorUnreachable) as info:
            _run(asynchronous, "http://coord", tmp_path / "app", kw, calls)

    # Assert: the first call's None says why; the second is an outage, not that answer again
    ((first, answer),) = seen
    assert first is None and answer is not None and answer.detail == "not selected yet"
    assert "POST /v1/checkin" in str(info.value)


@pytest.mark.timeout(20)
@MODES
def test_last_check_in_is_this_calls_answer(tmp_path: Path, asynchronous: bool) -> None:
    # Setup: the first call's check-in is answered "not selected yet"; from the second call
    # on, the coordinator answers every check-in 503 (an answer, not an outage)
    answers = [0]
    waits = _waits("not selected yet", 5.0)

    def coordinator(request: httpx.Request) -> httpx.Response:
        answers[0] += 1
        if answers[0] == 1:
            return waits(request)
        return httpx.Response(503, json={"reason": "overloaded", "detail": "busy"})

    kw = {"transport": httpx.MockTransport(coordinator)}
    seen: list[Any] = []

    def calls(client: Any, participate: Any) -> Any:
        if not asynchronous:
            seen.append((participate(max_wait_s=1.0), client.last_check_in))
            seen.append((participate(max_wait_s=1.0), client.last_check_in))
            return None

        async def one() -> None:
            seen.append((await participate(max_wait_s=1.0), client.last_check_in))

        return [one(), one()]

    # Execute
    _run(asynchronous, "http://coord", tmp_path / "app", kw, calls)

    # Assert: the second call's None comes with no answer of its own, not the first call's
    (r1, a1), (r2, a2) = seen
    assert r1 is None and a1 is not None and a1.detail == "not selected yet"
    assert r2 is None and a2 is None
    assert answers[0] > 2  # the 503s were retried within the wait


@pytest.mark.timeout(20)
@MODES
def test_an_outage_after_an_answer_of_this_call_returns_none_with_it(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Setup: the first check-in answers "wait 0 s"; the next ones go to a refused port
    with _dead("refused") as port:
        route = _Route(_waits("round gathering", 0.0), _path("/v1/checkin", after=1), port)
        seen: list[Any] = []

        def calls(client: Any, participate: Any) -> Any:
            if not asynchronous:
                seen.append((participate(max_wait_s=1.0), client.last_check_in))
                return None

            async def one() -> None:
                seen.append((await participate(max_wait_s=1.0), client.last_check_in))

            return [one()]

        # Execute
        _run(asynchronous, "http://coord", tmp_path / "app", {"transport": route}, calls)

    # Assert: this call was answered, so its wait ends as a wait does, with that answer
    ((result, answer),) = seen
    assert result is None and answer is not None and answer.detail == "round gathering"


@pytest.mark.timeout(20)
@MODES
def test_an_outage_in_the_re_send_raises_and_the_upload_stays_pending(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Setup: an upload an earlier run left pending; nothing listens
    with _dead("refused") as port:
        kept: list[Any] = []

        def calls(client: Any, participate: Any) -> Any:
            _encoded(client)
            if not asynchronous:
                try:
                    return participate(max_wait_s=1.0)
                finally:
                    kept.append(client._core.store.load_pending())

            async def one() -> None:
                try:
                    await participate(max_wait_s=1.0)
                finally:
                    kept.append(client._core.store.load_pending())

            return [one()]

        # Execute
        with pytest.raises(CoordinatorUnreachable) as info:
            _run(asynchronous, f"http://127.0.0.1:{port}", tmp_path / "app", {}, calls)

    # Assert: the re-send's outage, not None; the upload is still pending for the next call
    assert "POST /v1/rounds/4/updates" in str(info.value)
    assert kept and kept[0] is not None


@pytest.mark.timeout(20)
@MODES
def test_no_connection_within_the_wait_returns_none_with_no_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    # Setup: the host-name lookup stalls past the wait (as a connect to an address that drops
    # packets would): no attempt fails, the wait cuts the first one. Documented as None with
    # `last_check_in` None ("nothing came in time"), not as an outage.
    release = threading.Event()
    real = socket.getaddrinfo

    def stalled(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if (host.decode() if isinstance(host, bytes) else str(host)).endswith(".invalid"):
            release.wait(10)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stalled)
    seen: list[Any] = []

    def calls(client: Any, participate: Any) -> Any:
        if not asynchronous:
            seen.append((participate(max_wait_s=0.5), client.last_check_in))
            release.set()
            return None

        async def one() -> None:
            seen.append((await participate(max_wait_s=0.5), client.last_check_in))
            release.set()  # before `asyncio.run` waits for the executor's lookup thread

        return [one()]

    # Execute
    try:
        _run(asynchronous, "http://coordinator.invalid:8080", tmp_path / "app", {}, calls)
    finally:
        release.set()  # the lookup left in a worker thread ends now

    # Assert
    assert seen == [(None, None)]
