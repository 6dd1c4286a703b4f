"""helper-138's review of the short-wait outage (6e10692): an outage whose wait ends inside a
cut-short attempt still raises; the URL hint reads only this request's errors, not what the
app was handling; two concurrent participate calls each get their own last answer; a re-send
during an outage changes nothing in the app directory; `_LookupFailed` pickles."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdk import AsyncClient, Client, CoordinatorUnreachable
from sdk.client import _LookupFailed
from tests.sdk.test_h61_parity import _Trainer
from tests.sdk.test_h124_unreachable import X, Y, _dead, _encoded

MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
_REAL = socket.getaddrinfo


def _resolver(errno: int, delay: float = 0.0) -> Any:
    def getaddrinfo(host: Any, port: Any, *a: Any, **k: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.endswith(".invalid"):
            time.sleep(delay)
            raise socket.gaierror(errno, "resolver says no")
        return _REAL(host, port, *a, **k)

    return getaddrinfo


# (4) _LookupFailed pickles as CoordinatorUnreachable does
def test_lookup_failed_pickles() -> None:
    err = _LookupFailed("'x.invalid': boom", socket.gaierror(socket.EAI_NONAME, "no"))
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and isinstance(again.error, socket.gaierror)


# (5) hint misfire: an unrelated gaierror the app is handling reaches the chain via __context__
@pytest.mark.timeout(20)
@MODES
def test_no_dns_hint_on_a_refused_port_called_from_an_except_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(socket.EAI_NONAME))
    kw: dict[str, Any] = {"retries": 0, "backoff_s": 0.0}
    with _dead("refused") as port:
        base = f"http://127.0.0.1:{port}"
        err: BaseException | None = None
        try:
            socket.getaddrinfo("telemetry.invalid", 80)  # the app's own, unrelated lookup
        except socket.gaierror:
            try:
                if not asynchronous:
                    with Client(base, str(tmp_path / "a"), **kw) as c:
                        c.check_in(1)
                else:

                    async def run() -> None:
                        async with AsyncClient(base, str(tmp_path / "a"), **kw) as c:
                            await c.check_in(1)

                    asyncio.run(run())
            except CoordinatorUnreachable as exc:
                err = exc
    assert err is not None
    assert "base_url" not in str(err), str(err)


# (7) http-api.md: "a host name that does not resolve before any check-in of the call was
# answered is CoordinatorUnreachable, whatever max_wait_s". A resolver that takes 0.6 s to say
# NXDOMAIN (search domains, a slow DNS server) with max_wait_s=1:
@pytest.mark.timeout(20)
@MODES
def test_slow_nxdomain_short_wait_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(socket.EAI_NONAME, 0.6))
    base = "http://coordinator.invalid:8080"
    out: list[Any] = []

    def go() -> None:
        if not asynchronous:
            with Client(base, str(tmp_path / "a")) as c:
                out.append(c.participate(_Trainer(), X, Y, max_wait_s=1.0))
                out.append(c.last_check_in)
        else:

            async def run() -> None:
                async with AsyncClient(base, str(tmp_path / "a")) as c:
                    out.append(await c.participate(_Trainer(), X, Y, max_wait_s=1.0))
                    out.append(c.last_check_in)

            asyncio.run(run())

    with pytest.raises(CoordinatorUnreachable):
        go()


# (6) two concurrent participate calls on one AsyncClient: A's None must come with A's answer
@pytest.mark.timeout(20)
def test_concurrent_participate_last_check_in(tmp_path: Path) -> None:
    seen = {"A": 0}

    async def coordinator(request: httpx.Request) -> httpx.Response:
        body = request.content.decode().replace(" ", "")
        if '"task_id":2' in body:
            await asyncio.sleep(0.5)  # B's check-in is slow
            return httpx.Response(200, json={"action": "wait", "retry_after_s": 5, "detail": "B"})
        seen["A"] += 1
        if seen["A"] == 1:
            return httpx.Response(200, json={"action": "wait", "retry_after_s": 0.2, "detail": "A"})
        return httpx.Response(503, headers={"Retry-After": "5"}, json={"reason": "busy"})

    out: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncClient(
            "http://coord", str(tmp_path / "a"), transport=httpx.MockTransport(coordinator)
        ) as c:

            async def a() -> None:
                r = await c.participate(_Trainer(), X, Y, task_id=1, max_wait_s=0.5)
                out["A"] = (r, c.last_check_in)

            async def b() -> None:
                await asyncio.sleep(0.1)  # starts while A waits between check-ins
                r = await c.participate(_Trainer(), X, Y, task_id=2, max_wait_s=1.0)
                out["B"] = (r, c.last_check_in)

            await asyncio.gather(a(), b())

    asyncio.run(main())
    r, ans = out["A"]
    assert r is None
    assert ans is not None and ans.detail == "A", ans


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


# (1) re-send on an outage: pending and residual files unchanged, for refused / closed / 503->refused
@pytest.mark.timeout(30)
@MODES
@pytest.mark.parametrize("kind", ["refused", "closed"])
def test_resend_outage_changes_nothing(tmp_path: Path, asynchronous: bool, kind: str) -> None:
    root = tmp_path / "a"
    snap: list[dict[str, str]] = []
    with _dead(kind) as port:
        base = f"http://127.0.0.1:{port}"
        if not asynchronous:
            with Client(base, str(root)) as c:
                _encoded(c)
                snap.append(_files(root))
                with pytest.raises(CoordinatorUnreachable):
                    c.participate(_Trainer(), X, Y, max_wait_s=1.0)
                snap.append(_files(root))
                p = c._core.store.load_pending()
        else:

            async def run() -> Any:
                async with AsyncClient(base, str(root)) as c:
                    _encoded(c)
                    snap.append(_files(root))
                    with pytest.raises(CoordinatorUnreachable):
                        await c.participate(_Trainer(), X, Y, max_wait_s=1.0)
                    snap.append(_files(root))
                    return c._core.store.load_pending()

            p = asyncio.run(run())
    assert p is not None
    assert snap[0] == snap[1]
