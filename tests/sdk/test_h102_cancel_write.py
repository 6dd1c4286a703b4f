"""Writes while a call can be cancelled (`Client.participate(..., cancel=event)`), after
helper-101's review of the cancel path.

- A body that keeps moving but takes longer than `timeout` to write was cut with WriteTimeout
  (the timeout was given once for the whole body, where httpcore gives it to each send that
  makes progress), so a phone on a slow uplink never delivered its update.
- A cancel did not end a write whose peer stopped reading: each 64 KiB piece was one blocking
  send that waited out `timeout` without looking at the event.
- A transport failure the cancel came with surfaced as httpx's error, not as a cancel.
- A cancelled TLS handshake kept its socket open and its thread running until the timeout.

Each test below failed before the fix (see the commit message)."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from httpcore._backends.sync import SyncStream

from sdk import Client, ClientError
from sdk.client import (
    ParticipationCancelled,
    _Deadline,
    _DeadlineStream,
    _Stop,
    _tick,
    _upload_flow,
)
from sdk.device_store import PendingUpload
from tests._tls import self_signed
from tests.coordinator.test_service_support import (
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
)
from tests.sdk.test_h97_cancel import _in_thread, served  # noqa: F401 (served: fixture)

X, Y = local_data(3)
LONG = 30.0  # how long a test waits for an event before it fails (never reached when it passes)


def _pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    """A listener, a client socket and its accepted peer on loopback, buffers small (32 KiB)
    so that a write of a few hundred KiB fills them."""
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)
    peer, _ = srv.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    return srv, cli, peer


def _cancellable() -> _Deadline:
    """A thread's deadline state as `Client._cancel_scope` leaves it: no deadline, an event."""
    deadline = _Deadline()
    deadline.cancel = threading.Event()
    return deadline


def _drain(conn: Any, total: int, got: list[bytes], pause_s: float) -> threading.Thread:
    """Read `total` bytes from `conn` 32 KiB at a time, pausing `pause_s` after each read."""

    def run() -> None:
        size = 0
        with contextlib.suppress(OSError):
            while size < total:
                data = conn.recv(32 << 10)
                if not data:
                    return
                got.append(data)
                size += len(data)
                time.sleep(pause_s)

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    return reader


def _body(total: int) -> bytes:
    """`total` bytes that are not all alike, so that a lost or repeated piece shows."""
    block = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(2048))
    return (block * (total // len(block) + 1))[:total]


def test_a_slow_write_that_keeps_moving_is_not_cut_while_a_cancel_is_unset() -> None:
    # 512 KiB to a peer reading 32 KiB every 50 ms (about 0.8 s in all), write timeout 0.5 s:
    # each send makes progress within that, so httpcore's own write succeeds, and so must this.
    srv, cli, peer = _pair()
    body, got = _body(512 << 10), []
    reader = _drain(peer, len(body), got, 0.05)
    try:
        _DeadlineStream(SyncStream(cli), _cancellable()).write(body, timeout=0.5)
        reader.join(LONG)
    finally:
        cli.close(), peer.close(), srv.close()
    assert b"".join(got) == body


def test_a_cancel_ends_a_write_whose_peer_stopped_reading() -> None:
    srv, cli, peer = _pair()  # the peer never reads
    deadline = _cancellable()
    assert deadline.cancel is not None
    threading.Timer(0.3, deadline.cancel.set).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(_Stop):
            _DeadlineStream(SyncStream(cli), deadline).write(b"x" * (8 << 20), timeout=30.0)
        assert time.monotonic() - t0 < 10.0  # the 30 s timeout's end: not this
    finally:
        cli.close(), peer.close(), srv.close()


def test_a_write_whose_peer_stopped_reading_still_times_out_after_timeout() -> None:
    # The cancel never comes: the write ends as httpcore's would, `timeout` after its last
    # progress (not at once, not never).
    srv, cli, peer = _pair()
    t0 = time.monotonic()
    try:
        with pytest.raises(httpcore.WriteTimeout):
            _DeadlineStream(SyncStream(cli), _cancellable()).write(b"x" * (8 << 20), timeout=0.4)
        assert 0.4 <= time.monotonic() - t0 < 4.0
    finally:
        cli.close(), peer.close(), srv.close()


def test_the_threads_deadline_still_bounds_a_slow_write_that_keeps_moving() -> None:
    # Each send has the whole `timeout` again once it makes progress; `max_response_s` (the
    # thread's deadline, here 0.3 s) still ends the request: `too_slow`, as without a cancel.
    srv, cli, peer = _pair()
    got: list[bytes] = []
    _drain(peer, 512 << 10, got, 0.05)
    deadline = _cancellable()
    deadline.at, deadline.budget_s = _tick() + 0.3, 0.3
    t0 = time.monotonic()
    try:
        with pytest.raises(ClientError) as caught:
            _DeadlineStream(SyncStream(cli), deadline).write(_body(512 << 10), timeout=30.0)
        assert caught.value.reason == "too_slow"
        assert time.monotonic() - t0 < 10.0  # the 30 s timeout's end: not this
    finally:
        cli.close(), peer.close(), srv.close()


def _self_signed(tmp: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (not localhost) and its key, as PEM files."""
    return self_signed(tmp, localhost=False)


@pytest.fixture
def tls_pair(tmp_path: Path) -> Iterator[tuple[httpcore.NetworkStream, ssl.SSLSocket]]:
    """A TLS stream made as httpcore makes one (`SyncStream.start_tls`) and the server's end."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv, cli, peer = _pair()
    accepted: list[ssl.SSLSocket] = []
    handshake = threading.Thread(
        target=lambda: accepted.append(server_ctx.wrap_socket(peer, server_side=True)),
        daemon=True,
    )
    handshake.start()
    stream = SyncStream(cli).start_tls(ssl.create_default_context(cafile=cert), "127.0.0.1", LONG)
    handshake.join(LONG)
    try:
        yield stream, accepted[0]
    finally:
        stream.close(), accepted[0].close(), srv.close()


def test_a_slow_tls_write_arrives_whole_though_its_sends_wait_for_room(
    tls_pair: tuple[httpcore.NetworkStream, ssl.SSLSocket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A TLS record whose send waited more than 50 ms for room is sent again with the same bytes:
    # every byte must arrive once, in order, and the write must not be cut: the server reads a
    # record (16 KiB) every 80 ms, about 1.3 s in all; timeout 0.5 s.
    stream, server = tls_pair
    body, got = _body(256 << 10), []
    timed_out = []
    send = ssl.SSLSocket.send

    def counted(sock: ssl.SSLSocket, data: Any, flags: int = 0) -> int:
        try:
            return send(sock, data, flags)
        except TimeoutError:
            timed_out.append(len(data))
            raise

    monkeypatch.setattr(ssl.SSLSocket, "send", counted)
    reader = _drain(server, len(body), got, 0.08)
    _DeadlineStream(stream, _cancellable()).write(body, timeout=0.5)
    reader.join(LONG)
    assert b"".join(got) == body
    assert timed_out  # the case this test is about: sends that timed out and were tried again


def test_a_cancel_ends_a_tls_write_whose_peer_stopped_reading(
    tls_pair: tuple[httpcore.NetworkStream, ssl.SSLSocket],
) -> None:
    stream, _ = tls_pair  # the server never reads
    deadline = _cancellable()
    assert deadline.cancel is not None
    threading.Timer(0.3, deadline.cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(_Stop):
        _DeadlineStream(stream, deadline).write(b"x" * (8 << 20), timeout=30.0)
    assert time.monotonic() - t0 < 10.0  # the 30 s timeout's end: not this


class _ReadsHeadersOnly:
    """An HTTP server on loopback that reads a request's headers and then stops reading (the
    network went away mid-upload); `reading` is set once the headers are in."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.reading, self.done = threading.Event(), threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.listener.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                self.reading.set()
                self.done.wait(LONG)

    def close(self) -> None:
        self.done.set()
        self.listener.close()


def test_a_cancel_ends_an_upload_whose_body_stalled(tmp_path: Path) -> None:
    # An upload of 16 MiB (far more than the socket buffers hold) to a server that stopped
    # reading its body; timeout 30 s. The app cancels once the body is being sent.
    server = _ReadsHeadersOnly()
    cancel = threading.Event()
    try:
        with Client(server.url, str(tmp_path / "dev"), timeout=30.0) as device:
            pending = PendingUpload(1, "k" * 32, b"\0" * (16 << 20), 0, None, None)

            def upload() -> None:
                with device._cancel_scope(cancel):
                    device._run(_upload_flow(device._core, pending, None, float("inf")))

            worker, out = _in_thread(upload)
            assert server.reading.wait(LONG)
            time.sleep(0.2)  # the buffers fill; the send waits for room
            set_at = time.monotonic()
            cancel.set()
            worker.join(LONG)
    finally:
        server.close()
    assert isinstance(out.get("error"), _Stop), out
    assert out["ended"] - set_at < 3.0  # the 30 s timeout's end: not this


def test_a_transport_failure_that_came_with_the_cancel_is_a_cancel_and_stays_pending(
    served: tuple[str, httpx.Client],  # noqa: F811
    tmp_path: Path,
) -> None:
    # The upload's last attempt (retries=0) fails while the app's cancel is set (the OS took
    # the network away as it stopped the job): ParticipationCancelled, not httpx's WriteError,
    # and the upload stays pending as after a crash (it may have been taken).
    url, http = served
    task_id = create_task(http, task_config(clients_per_round=1, rounds=3))
    app_dir = tmp_path / "dev"
    cancel = threading.Event()

    def cut(request: httpx.Request, nxt: Any) -> httpx.Response:
        if "/updates" in request.url.path:
            cancel.set()
            raise httpx.WriteError("network gone", request=request)
        response: httpx.Response = nxt(request)
        return response

    with Client(url, str(app_dir), retries=0, mods=(cut,)) as device:
        device.register()
        with pytest.raises(ParticipationCancelled) as caught:
            device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, cancel=cancel)
    assert caught.value.phase == "upload"
    assert (app_dir / "pending.json").exists()
    with Client(url, str(app_dir)) as device:
        receipt = device.resume_pending()
    assert receipt is not None and receipt.accepted


def test_a_cancelled_tls_handshake_closes_its_connection_at_once(tmp_path: Path) -> None:
    # A server that never answers the ClientHello; timeout LONG (30 s). It must see the connection
    # closed when the cancel ends the call, not when the handshake's timeout passes.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted, closed = threading.Event(), threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(LONG * 2)
            accepted.set()
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass
            closed.set()

    threading.Thread(target=serve, daemon=True).start()
    cancel = threading.Event()
    try:
        with Client(f"https://127.0.0.1:{port}", str(tmp_path / "dev"), timeout=LONG) as device:
            worker, out = _in_thread(
                lambda: device.participate(SoftmaxTrainer(), X, Y, cancel=cancel)
            )
            assert accepted.wait(LONG)
            set_at = time.monotonic()
            cancel.set()
            worker.join(LONG)
            assert closed.wait(LONG)
            closed_after = time.monotonic() - set_at
    finally:
        listener.close()
    err = out.get("error")
    assert isinstance(err, ParticipationCancelled) and err.phase == "check-in", out
    assert closed_after < 10.0  # the handshake's 30 s timeout: not this
