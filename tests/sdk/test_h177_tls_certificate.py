"""A coordinator whose TLS certificate fails verification is `TlsCertificateError` (a
`ClientError`, reason `tls_certificate`) at the first attempt, never retried, for `Client` and
`AsyncClient` alike (helper-174's review). Before, httpx's `ConnectError` wrapping OpenSSL's
CERTIFICATE_VERIFY_FAILED was retried `retries` times and raised as `CoordinatorUnreachable`,
whose advice is "call again later": a setting fails the same way every time."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compression import ErrorFeedback, ModelSpec
from sdk import AsyncClient, Client, ClientError, CoordinatorUnreachable
from sdk.client import TLS_CERTIFICATE, TlsCertificateError
from sdk.device_store import DeviceStore, PendingUpload

from .test_h102_cancel_write import _self_signed

MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
# Retries that would be seen: five attempts, each after a backoff the test would notice.
KW: dict[str, Any] = {"retries": 4, "backoff_s": 0.05, "timeout": 10.0}


def _read_request(sock: ssl.SSLSocket) -> None:
    """Read one HTTP request whole (its headers, then `Content-Length` bytes): a reply sent
    and the socket closed with request bytes unread resets the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    size = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            size = int(value)
    while len(body) < size:
        chunk = sock.recv(65536)
        if not chunk:
            return
        body += chunk


class _TlsServer:
    """A TLS listener on `host` that counts handshakes attempted and answers every request
    with a check-in "wait"."""

    def __init__(self, cert: str, key: str, host: str = "127.0.0.1") -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            tls = self.ctx.wrap_socket(conn, server_side=True)
            _read_request(tls)
            body = b'{"action":"wait","retry_after_s":1}'
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
            tls.sendall(head + body)
            tls.close()
        except OSError:  # the client refused the certificate
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[_TlsServer, str]]:
    cert, key = _self_signed(tmp_path)
    server = _TlsServer(cert, key)
    try:
        yield server, cert
    finally:
        server.close()


def _run(base: str, root: Path, asynchronous: bool, call: str = "check_in", **kw: Any) -> Any:
    """`call` (`check_in` of task 1, or a method without arguments) on a client of `base`."""
    if not asynchronous:
        with Client(base, str(root), **{**KW, **kw}) as client:
            method = getattr(client, call)
            return method(1) if call == "check_in" else method()

    async def run() -> Any:
        async with AsyncClient(base, str(root), **{**KW, **kw}) as client:
            method = getattr(client, call)
            return await (method(1) if call == "check_in" else method())

    return asyncio.run(run())


@MODES
def test_an_untrusted_certificate_is_not_retried_nor_an_outage(
    tls: tuple[_TlsServer, str], tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare
    server, _ = tls
    base = f"https://127.0.0.1:{server.port}"
    # Execute
    with pytest.raises(ClientError) as info:
        _run(base, tmp_path / "dev", asynchronous)
    # Assert: one handshake, a TlsCertificateError that says what to change
    err = info.value
    assert type(err) is TlsCertificateError, repr(err)
    assert not isinstance(err, CoordinatorUnreachable)
    assert (err.status, err.reason) == (0, TLS_CERTIFICATE)
    assert server.connections == 1
    assert f"the coordinator at {base}" in err.detail
    assert "self-signed certificate" in err.detail
    assert "POST /v1/checkin" in err.detail
    assert "not retried: pass verify= the coordinator's CA bundle" in err.detail
    # not the system's store: httpx's verify=True reads certifi's bundle (helper-349)
    assert "not a CA added to the system's store" in err.detail
    assert "install that CA" not in err.detail
    assert isinstance(err.__cause__, Exception) and "CERTIFICATE_VERIFY_FAILED" in str(
        err.__cause__
    )


@MODES
def test_the_same_certificate_trusted_through_verify_is_answered(
    tls: tuple[_TlsServer, str], tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare
    server, cert = tls
    # Execute
    answer = _run(
        f"https://127.0.0.1:{server.port}", tmp_path / "dev", asynchronous,
        verify=ssl.create_default_context(cafile=cert),
    )  # fmt: skip
    # Assert
    assert answer.action == "wait"


@MODES
def test_a_certificate_that_does_not_name_the_host_says_so(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: the certificate names 127.0.0.1 and localhost; the server listens on 127.0.0.2
    cert, key = _self_signed(tmp_path)
    try:
        server = _TlsServer(cert, key, host="127.0.0.2")
    except OSError:
        pytest.skip("no 127.0.0.2 on this host's loopback")
    try:
        # Execute
        with pytest.raises(TlsCertificateError) as info:
            _run(
                f"https://127.0.0.2:{server.port}", tmp_path / "dev", asynchronous,
                verify=ssl.create_default_context(cafile=cert),
            )  # fmt: skip
    finally:
        server.close()
    # Assert
    assert server.connections == 1
    assert "the certificate does not name the host '127.0.0.2'" in info.value.detail


def test_participate_raises_it_at_once_with_a_cancel_event(
    tls: tuple[_TlsServer, str], tmp_path: Path
) -> None:
    # Prepare: participate's path (a deadline, a cancel event: the handshake runs bounded)
    server, _ = tls
    stop = threading.Event()

    class Untrained:
        def train(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("no round")

    x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)
    # Execute
    with (
        Client(f"https://127.0.0.1:{server.port}", str(tmp_path / "dev"), **KW) as client,
        pytest.raises(TlsCertificateError),
    ):
        client.participate(Untrained(), x, y, task_id=1, max_wait_s=60, cancel=stop)
    # Assert
    assert server.connections == 1


@MODES
def test_a_pending_upload_resent_first_raises_it_and_stays_pending(
    tls: tuple[_TlsServer, str], tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: an upload an earlier run left pending. Before, `resume_pending` took the
    # failure for a refusal and returned None.
    server, _ = tls
    root = tmp_path / "dev"
    spec = ModelSpec.from_shapes([("w", (4,))])
    with DeviceStore(str(root)) as store:
        store.save_pending(PendingUpload(4, "k" * 32, b"frame", 16, spec, 1), ErrorFeedback(4))
    # Execute
    with pytest.raises(TlsCertificateError):
        _run(f"https://127.0.0.1:{server.port}", root, asynchronous, call="resume_pending")
    # Assert
    assert server.connections == 1
    with DeviceStore(str(root)) as store:
        pending = store.load_pending()
    assert pending is not None and pending.round_id == 4
