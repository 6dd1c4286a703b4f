"""`Client`'s connect (`_DeadlineBackend.connect_tcp`) races a host name's addresses (RFC 8305's
Happy Eyeballs), as `AsyncClient`'s `_dial` does (tests/sdk/test_h311_async_socket.py).

The families take turns, the first looked-up address's family first (`_interleaved`, which
`_dial` uses too); the next address is dialled once the previous attempt failed or has not
connected within 250 ms, each attempt on a thread of its own; the first to connect is used and
every other attempt closes its connection when it ends; the lookup and the race share one
connect timeout. Before, the addresses were dialled one after another, each with the whole
connect timeout: a first address that never answers (a broken IPv6 route) held every
connect up for that timeout. A thread without a deadline (an unbounded `max_response_s`)
handed the name to httpcore's own connect (`socket.create_connection`), which did the same;
it races too. Names resolve through a replaced `socket.getaddrinfo`, so no real DNS is used;
every address is on loopback (127.0.0.x, one port: `Client` dials the port the URL names), or
the inner backend is a stub that records what it was asked.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import pytest

from sdk.client import _Deadline, _DeadlineBackend, _DeadlineStream, _Stop, _tick
from tests.sdk.test_h311_async_socket import NAME, _black_hole, _info, _NoIPv6, _record
from tests.sdk.test_h311_async_socket import resolve as resolve  # noqa: F401  (the fixture)

CONNECT_S = 20.0
_REAL_SOCKET = socket.socket


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[socket.socket]]:
    """The sockets made once `record` is called (`socket.create_connection`'s); after the
    test, the race's attempts are waited for and the sockets closed."""
    sockets: list[socket.socket] = []
    yield sockets
    _join_attempts(CONNECT_S + 5)
    for sock in sockets:
        sock.close()


def _join_attempts(timeout: float) -> None:
    """Wait for the race's attempt threads to end."""
    end = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name == "plume-connect":
            thread.join(max(end - time.monotonic(), 0.0))


def _live(bound: socket.socket | None = None) -> socket.socket:
    """A listener on 127.0.0.1 (any port; or where `bound`, a socket already bound, is): the
    kernel completes connects to it (its backlog holds them)."""
    listener = bound or _REAL_SOCKET()
    if bound is None:
        listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def _one_port(*hosts: str, tries: int = 50) -> list[socket.socket]:
    """Sockets bound to one port, one on each of `hosts` (loopback addresses), not yet
    listening. The kernel picks a port free on the first; one that another socket holds on one
    of the others (a parallel test's, or a process's on 0.0.0.0: a CI run once failed on
    EADDRINUSE so) is given up and the kernel asked again, up to `tries` times."""
    for _ in range(tries):
        bound: list[socket.socket] = []
        try:
            for host in hosts:
                sock = _REAL_SOCKET()
                bound.append(sock)
                sock.bind((host, bound[0].getsockname()[1] if len(bound) > 1 else 0))
            return bound
        except OSError as error:
            for sock in bound:
                sock.close()
            if error.errno != errno.EADDRINUSE:
                raise
    raise AssertionError(f"no port free on all of {hosts} in {tries} tries")


def _backend(bounded: bool, inner: httpcore.NetworkBackend | None = None) -> _DeadlineBackend:
    """`Client`'s backend over httpcore's sync one (or `inner`); its thread's deadline 60 s
    away when `bounded`, none otherwise (an unbounded `max_response_s`)."""
    deadline = _Deadline()
    if bounded:
        deadline.at, deadline.budget_s = _tick() + 60.0, 60.0
    return _DeadlineBackend(inner or httpcore.SyncBackend(), deadline)


BOUNDED = pytest.mark.parametrize("bounded", [True, False], ids=["deadline", "no_deadline"])


@BOUNDED
def test_a_first_address_that_never_answers_does_not_hold_up_the_second(
    resolve: list[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch,
    made: list[socket.socket],
    bounded: bool,
) -> None:
    # Prepare: a name whose first address drops SYNs (a black-holed IPv6 route, say) and whose
    # second accepts; a connect timeout of 20 s
    on_live, on_hole = _one_port("127.0.0.1", "127.0.0.2")
    live = _live(on_live)
    port = live.getsockname()[1]
    try:
        with _black_hole(bound=on_hole) as hole:
            resolve[:] = [_info(hole), _info(("127.0.0.1", port))]
            _record(monkeypatch, made)
            started = time.monotonic()

            # Execute
            stream = _backend(bounded).connect_tcp(NAME, port, timeout=CONNECT_S)
            took = time.monotonic() - started
            addr = stream.get_extra_info("server_addr")
            stream.close()
    finally:
        live.close()

    # Verify: the second address was dialled 250 ms after the first, and connected well
    # before the first's attempt could time out (before: after 20 s, the whole connect
    # timeout spent on the first address)
    assert addr == ("127.0.0.1", port)
    assert took < CONNECT_S / 2
    assert len(made) == 2


def test_addresses_none_answers_fail_within_one_connect_timeout(
    resolve: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch, made: list[socket.socket]
) -> None:
    # Prepare: five addresses that never answer (one port on five loopback addresses); a
    # connect timeout of 2 s
    with contextlib.ExitStack() as holes:
        bound = _one_port(*(f"127.0.0.{i}" for i in range(2, 7)))
        every = [holes.enter_context(_black_hole(bound=sock)) for sock in bound]
        port = every[0][1]
        resolve[:] = [_info(hole) for hole in every]
        _record(monkeypatch, made)
        started = time.monotonic()

        # Execute
        with pytest.raises(httpcore.ConnectTimeout):
            _backend(True).connect_tcp(NAME, port, timeout=2.0)
        took = time.monotonic() - started
        _join_attempts(10.0)

    # Verify: all five were dialled, and their sockets closed once their attempts ended
    # (each given what was left of the 2 s); the whole connect took its timeout once
    # (before: 2 s for each address in turn, 10 s)
    assert len(made) == 5 and all(s.fileno() < 0 for s in made)
    assert took < 6.0


class _Stub(httpcore.NetworkBackend):
    """An inner backend whose connect to an address does what `plan` says: "refuse" (at
    once), "connect" (at once), or "hold" (connects once `release` is set)."""

    def __init__(self, plan: dict[str, str]) -> None:
        self.plan = plan
        self.dialled: list[str] = []
        self.streams: dict[str, _StubStream] = {}
        self.release = threading.Event()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, *args: Any) -> Any:
        self.dialled.append(host)
        if self.plan[host] == "refuse":
            raise httpcore.ConnectError(f"refused by {host}")
        if self.plan[host] == "hold" and not self.release.wait(timeout):
            raise httpcore.ConnectTimeout(f"{host}: timed out")
        self.streams[host] = stream = _StubStream()
        return stream


class _StubStream(httpcore.NetworkStream):
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _four_refusing(resolve: list[tuple[Any, ...]]) -> _Stub:
    """`NAME` resolves to two IPv6 then two IPv4 addresses (port 9); a stub that refuses each
    at once."""
    resolve[:] = [_info(a) for a in (("::1", 9, 0, 0), ("::2", 9, 0, 0))]
    resolve += [_info(a) for a in (("127.0.0.1", 9), ("127.0.0.2", 9))]
    return _Stub(dict.fromkeys(["::1", "::2", "127.0.0.1", "127.0.0.2"], "refuse"))


def test_refused_addresses_are_dialled_families_interleaved_the_last_error_raised(
    resolve: list[tuple[Any, ...]],
) -> None:
    # Prepare: a name with two IPv6 then two IPv4 addresses, each refused at once
    stub = _four_refusing(resolve)

    # Execute
    with pytest.raises(httpcore.ConnectError) as raised:
        _backend(True, stub).connect_tcp(NAME, 9, timeout=CONNECT_S)

    # Verify: RFC 8305's order (families alternating, the first answer's first; before: as
    # looked up); each refusal started the next at once; the last address's error raised
    assert stub.dialled == ["::1", "127.0.0.1", "::2", "127.0.0.2"]
    assert "refused by 127.0.0.2" in str(raised.value)


def test_an_attempt_that_connects_after_the_winner_is_closed(
    resolve: list[tuple[Any, ...]],
) -> None:
    # Prepare: the first address connects only when the test lets it, the second at once
    resolve[:] = [_info(("127.0.0.1", 9)), _info(("127.0.0.2", 9))]
    stub = _Stub({"127.0.0.1": "hold", "127.0.0.2": "connect"})
    started = time.monotonic()

    # Execute: the race is won; then the first attempt connects
    stream = _backend(True, stub).connect_tcp(NAME, 9, timeout=CONNECT_S)
    took = time.monotonic() - started
    stub.release.set()
    _join_attempts(10.0)

    # Verify: the second address's stream won (before: the first was waited for, its whole
    # connect timeout); the first's, made after, was closed
    assert took < CONNECT_S / 2
    assert isinstance(stream, _DeadlineStream)
    assert stream._inner is stub.streams["127.0.0.2"] and not stub.streams["127.0.0.2"].closed
    assert stub.streams["127.0.0.1"].closed


def test_an_address_family_the_host_cannot_open_is_skipped(
    resolve: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: no IPv6 on this "host" (socket(AF_INET6) fails with EAFNOSUPPORT), and a name
    # whose first address is IPv6, its second IPv4
    live = _live()
    port = live.getsockname()[1]
    resolve[:] = [_info(("::1", port, 0, 0)), _info(("127.0.0.1", port))]
    monkeypatch.setattr(socket, "socket", _NoIPv6)
    try:
        # Execute
        stream = _backend(True).connect_tcp(NAME, port, timeout=CONNECT_S)
        addr = stream.get_extra_info("server_addr")
        stream.close()
    finally:
        live.close()

    # Verify: connected to the IPv4 address
    assert addr == ("127.0.0.1", port)


def test_a_cancel_while_racing_stops_the_connect_and_closes_every_attempt(
    resolve: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch, made: list[socket.socket]
) -> None:
    # Prepare: two addresses that never answer; the call's cancel event set once both are
    # dialled; a connect timeout of 3 s
    cancel = threading.Event()
    backend = _backend(True)
    backend._deadline.cancel = cancel

    def cancel_once_both_dialled() -> None:
        for _ in range(100):
            if len(made) == 2:
                break
            time.sleep(0.05)
        cancel.set()

    on_a, on_b = _one_port("127.0.0.2", "127.0.0.3")
    with _black_hole(bound=on_a) as a, _black_hole(bound=on_b) as b:
        resolve[:] = [_info(a), _info(b)]
        _record(monkeypatch, made)
        threading.Thread(target=cancel_once_both_dialled, daemon=True).start()

        # Execute
        with pytest.raises(_Stop):
            backend.connect_tcp(NAME, a[1], timeout=3.0)
        stopped_before_timeout = not all(s.fileno() < 0 for s in made)
        _join_attempts(10.0)

    # Verify: the connect stopped while the attempts were still connecting, and their
    # sockets were closed when they ended
    assert stopped_before_timeout
    assert len(made) == 2 and all(s.fileno() < 0 for s in made)


def test_a_local_address_dials_only_the_addresses_of_its_family(
    resolve: list[tuple[Any, ...]],
) -> None:
    # Prepare: a name with two IPv6 and two IPv4 addresses, each refused at once; the
    # attempts bind to an IPv4 local address (as AsyncClient's _dial, test_h311)
    stub = _four_refusing(resolve)

    # Execute
    with pytest.raises(httpcore.ConnectError) as raised:
        _backend(True, stub).connect_tcp(NAME, 9, timeout=CONNECT_S, local_address="127.0.0.1")
    resolve[:] = [_info(("::1", 9, 0, 0))]
    with pytest.raises(httpcore.ConnectError) as none_of_family:
        _backend(True, stub).connect_tcp(NAME, 9, timeout=CONNECT_S, local_address="127.0.0.1")

    # Verify: only the IPv4 addresses were dialled (before: all four, and an IPv6 one last
    # would fail at its bind, hiding the refusals); a name with none says so
    assert stub.dialled == ["127.0.0.1", "127.0.0.2"]
    assert "refused by 127.0.0.2" in str(raised.value)
    assert "has no IPv4 address, the family of local_address 127.0.0.1" in str(none_of_family.value)


def test_one_port_asks_again_when_the_port_is_taken_on_another_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: binds on 127.0.0.2 fail with EADDRINUSE twice (the port held there, as a CI run
    # once met), then succeed
    refusals = [OSError(errno.EADDRINUSE, "Address already in use")] * 2
    ports: list[int] = []

    class Taken(_REAL_SOCKET):
        def bind(self, address: Any) -> None:
            if address[0] == "127.0.0.2" and refusals:
                ports.append(address[1])
                raise refusals.pop()
            super().bind(address)

    monkeypatch.setattr(sys.modules[__name__], "_REAL_SOCKET", Taken)

    # Execute
    bound = _one_port("127.0.0.1", "127.0.0.2")

    # Verify: two refused tries, then one port held on both addresses
    try:
        assert len(ports) == 2 and not refusals
        assert [sock.getsockname() for sock in bound] == [
            ("127.0.0.1", bound[0].getsockname()[1]),
            ("127.0.0.2", bound[0].getsockname()[1]),
        ]
    finally:
        for sock in bound:
            sock.close()
