"""`max_response_s` bounds trickled response headers with an injected `httpx.HTTPTransport` too.

The sync `Client` bounds a whole response, headers included, by wrapping the socket backend of
the httpcore pool under httpx's transports (`_bound_sockets`), but only of the transport httpx
built itself: with `transport=httpx.HTTPTransport(...)` (to set retries, a local address, a
proxy or TLS options) a server trickling header bytes just inside the read timeout held the
device for as long as it liked (40 bytes, 0.2 s apart: 8 s here against a 1 s budget). Now an
injected `httpx.HTTPTransport`'s pool is wrapped the same way, once however many clients share
it, and stays a pass-through for requests no Plume client makes. Any other transport (a
`MockTransport`, an app's own `BaseTransport`) is not touched: its headers are bounded by that
transport alone (docs/http-api.md)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from sdk import Client
from sdk import client as sdk_client
from sdk.client import ClientError

from .test_client_deadlines import BUDGET_S, SLACK_S, Loopback


def _timed_check_in(client: Client) -> tuple[ClientError, float]:
    start = time.monotonic()
    with pytest.raises(ClientError) as info:
        client.check_in(1)
    return info.value, time.monotonic() - start


def test_trickled_headers_through_an_injected_http_transport_are_abandoned(
    tmp_path: Path,
) -> None:
    # Prepare: the first answer trickles its headers; later ones are prompt check-in waits
    with Loopback(lambda n: "trickle" if n == 0 else "wait") as server:
        transport = httpx.HTTPTransport(retries=0)
        with Client(server.url, str(tmp_path), transport=transport, max_response_s=BUDGET_S) as c:
            # Execute
            err, elapsed = _timed_check_in(c)

            # Assert: abandoned after the budget (before, read to the end, ~8 s), and the
            # client still works
            assert err.reason == "too_slow", err
            assert elapsed < BUDGET_S + SLACK_S, f"{elapsed:.2f} s"
            assert c.check_in(1).action == "wait"
        assert server.cut.wait(timeout=5.0)


def test_clients_sharing_a_transport_are_each_bounded_and_wrap_it_once(tmp_path: Path) -> None:
    # Prepare: two clients on one transport; the first two answers trickle
    with Loopback(lambda n: "trickle" if n < 2 else "wait") as server:
        transport = httpx.HTTPTransport()
        a = Client(server.url, str(tmp_path / "a"), transport=transport, max_response_s=BUDGET_S)
        b = Client(server.url, str(tmp_path / "b"), transport=transport, max_response_s=BUDGET_S)
        try:
            # Execute
            results = [_timed_check_in(a), _timed_check_in(b)]
        finally:
            a.close()
            b.close()

    # Assert: both abandoned after the budget; one wrapper on the pool, not one per client
    for err, elapsed in results:
        assert err.reason == "too_slow" and elapsed < BUDGET_S + SLACK_S, (err, elapsed)
    backend = transport._pool._network_backend
    assert isinstance(backend, sdk_client._DeadlineBackend)
    assert not isinstance(backend._inner, sdk_client._DeadlineBackend)


def test_a_wrapped_transport_passes_other_requests_through(tmp_path: Path) -> None:
    # Control: after a Plume client wrapped it, a plain httpx client on the same transport is
    # not bounded by it (no Plume deadline on its thread) and gets its answer as before
    with Loopback(lambda n: "wait") as server:
        transport = httpx.HTTPTransport()
        with Client(server.url, str(tmp_path), transport=transport, max_response_s=BUDGET_S):
            with httpx.Client(base_url=server.url, transport=transport) as plain:
                answer = plain.post("/v1/checkin", content=b"{}")
    assert answer.status_code == 200 and answer.json()["action"] == "wait"


def test_a_custom_transport_is_not_touched(tmp_path: Path) -> None:
    # A transport that is not httpx's own keeps its object as given (nothing to wrap)
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    before = dict(vars(transport))
    with Client("http://coord", str(tmp_path), transport=transport):
        pass
    assert vars(transport) == before
