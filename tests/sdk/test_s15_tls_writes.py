"""Two TLS paths of the client's socket layer (helper-105's review of 11f5020):

- Without a cancel event, a TLS upload that keeps moving is not cut by `timeout`: Python's SSL
  send gives one deadline to the whole buffer, so the body goes a record (16 KiB) at a time,
  each send with the whole timeout, as on a plain socket. Before, a 256 KiB body read slowly
  failed with WriteTimeout after 0.5 s.
- With a cancel event, a call through an `https://` proxy to an `https://` coordinator (TLS in
  TLS) works: `SSLSocket.dup()` raised NotImplementedError out of `participate`."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

import httpx
import pytest
from httpcore._backends.sync import SyncStream

from coordinator.service import ServerThread, ServiceConfig
from sdk import Client, RoundReport
from sdk import client as client_module
from sdk.client import _Deadline, _DeadlineStream
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
)

from .test_h102_cancel_write import _body, _drain, _pair, _self_signed

X, Y = local_data(3)


def test_a_slow_tls_write_that_keeps_moving_is_not_cut_without_a_cancel(tmp_path: Path) -> None:
    # Prepare: a TLS connection whose peer reads 32 KiB every 80 ms (about 0.7 s for 256 KiB)
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv, cli, peer = _pair()
    accepted: list[ssl.SSLSocket] = []
    hello = threading.Thread(
        target=lambda: accepted.append(server_ctx.wrap_socket(peer, server_side=True))
    )
    hello.start()
    stream = SyncStream(cli).start_tls(ssl.create_default_context(cafile=cert), "127.0.0.1", 5)
    hello.join(5)
    body, got = _body(256 << 10), []
    reader = _drain(accepted[0], len(body), got, 0.08)
    try:
        # Execute: no cancel event, a 0.5 s write timeout
        _DeadlineStream(stream, _Deadline()).write(body, timeout=0.5)
        reader.join(5)
        # Assert: every byte arrived, once, in order
        assert b"".join(got) == body
    finally:
        stream.close()
        accepted[0].close()
        srv.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := a.recv(65536):
            b.sendall(data)
    with contextlib.suppress(OSError):
        b.shutdown(socket.SHUT_WR)


def _https_proxy(listener: socket.socket, ctx: ssl.SSLContext) -> None:
    """A CONNECT proxy spoken to over TLS (an `https://` proxy URL)."""
    while True:
        try:
            raw, _ = listener.accept()
        except OSError:
            return

        def handle(raw: socket.socket = raw) -> None:
            with contextlib.suppress(OSError, ValueError):
                conn = ctx.wrap_socket(raw, server_side=True)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                host, port = head.split()[1].decode().rsplit(":", 1)
                up = socket.create_connection((host, int(port)))
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                threading.Thread(target=_pipe, args=(conn, up), daemon=True).start()
                _pipe(up, conn)

        threading.Thread(target=handle, daemon=True).start()


def test_a_cancellable_round_through_an_https_proxy_to_an_https_coordinator(
    tmp_path: Path,
) -> None:
    # Prepare: a TLS coordinator, a TLS proxy in front of it, a registered device
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_https_proxy, args=(listener, server_ctx), daemon=True).start()
    proxy_url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    client_ctx = ssl.create_default_context(cafile=cert)
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    try:
        with ServerThread(cfg, tls_cert=cert, tls_key=key) as url:
            with httpx.Client(base_url=url, verify=cert) as admin:
                task_id = create_task(admin, task_config(clients_per_round=1, rounds=3))
            with Client(url, str(tmp_path / "dev"), verify=cert) as first:
                first.register()
            proxied = httpx.HTTPTransport(
                verify=client_ctx, proxy=httpx.Proxy(proxy_url, ssl_context=client_ctx)
            )
            with Client(
                url, str(tmp_path / "dev"), transport=proxied, verify=cert, timeout=5
            ) as device:
                # Execute: a fresh proxied connection, with a cancel event never set
                report = device.participate(
                    SoftmaxTrainer(), X, Y, task_id=task_id, cancel=threading.Event()
                )
        # Assert
        assert isinstance(report, RoundReport) and report.num_examples > 0
    finally:
        listener.close()


def test_without_httpcores_private_stream_a_cancellable_write_still_goes_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on an httpcore whose private SyncStream moved: the cancel is looked at between pieces
    monkeypatch.setattr(client_module, "_SyncStream", None)
    srv, cli, peer = _pair()
    body, got = _body(256 << 10), []
    reader = _drain(peer, len(body), got, 0.0)
    deadline = _Deadline()
    deadline.cancel = threading.Event()
    try:
        _DeadlineStream(SyncStream(cli), deadline).write(body, timeout=5)
        reader.join(5)
        assert b"".join(got) == body
    finally:
        cli.close()
        peer.close()
        srv.close()
