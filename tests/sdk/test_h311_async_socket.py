"""`AsyncClient`'s own network backend (`_AsyncSocketBackend`): connecting and closing as
anyio's backend (httpx's default, which it replaced) did.

`_dial` goes on to a name's next address when a socket of the first one's family cannot be
made (a host without IPv6 gets AAAA answers: getaddrinfo is asked without AI_ADDRCONFIG), as
`socket.create_connection` and anyio do. Names resolve through a replaced
`socket.getaddrinfo` (the event loop's lookup calls it), so no real DNS is used, and every
address is on loopback.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from sdk.client import _AsyncSocketBackend, _AutoBackend

NAME = "dual.test"
_REAL_GETADDRINFO = socket.getaddrinfo
_REAL_SOCKET = socket.socket


def _info(address: tuple[Any, ...]) -> tuple[Any, ...]:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)


@pytest.fixture
def resolve(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """`NAME` resolves to the addresses (getaddrinfo's tuples) the test puts in the list."""
    infos: list[tuple[Any, ...]] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if (host.decode() if isinstance(host, bytes) else host) != NAME:
            return _REAL_GETADDRINFO(host, port, *args, **kwargs)
        return list(infos)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield infos


def _backend() -> _AsyncSocketBackend:
    assert _AutoBackend is not None
    return _AsyncSocketBackend(_AutoBackend())


async def _listener() -> tuple[asyncio.Server, int]:
    """A loopback server that accepts and holds each connection; its port."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_an_address_family_the_host_cannot_make_a_socket_of_is_skipped(
    resolve: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: no IPv6 on this "host" (socket(AF_INET6) fails with EAFNOSUPPORT, as with
    # ipv6.disable=1), and a name whose first address is IPv6, its second IPv4
    class NoIPv6(_REAL_SOCKET):
        def __init__(self, family: Any = -1, *args: Any, **kwargs: Any) -> None:
            if family == socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
            super().__init__(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", NoIPv6)

    async def run() -> Any:
        server, port = await _listener()
        resolve[:] = [_info(("::1", port, 0, 0)), _info(("127.0.0.1", port))]
        try:
            stream = await _backend().connect_tcp(NAME, port, timeout=5)
            try:
                return stream.get_extra_info("server_addr")
            finally:
                await stream.aclose()
        finally:
            server.close()
            await server.wait_closed()

    # Execute / Verify: connected to the IPv4 address (it failed: ConnectError [Errno 97])
    assert asyncio.run(run())[0] == "127.0.0.1"
