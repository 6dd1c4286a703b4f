"""Stop 46: `check_reachable` asks the address for Ray's gRPC server, not only for a TCP
connection: the GCS (and the Ray client server behind ``ray://``) answer an HTTP/2 preface
with a SETTINGS frame at once. A service that took the connection and said nothing, or spoke
another protocol (an HTTP/1 server on the port), passed the TCP check and ray.init then
retried it for minutes (carried since stop 42)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from mobile_sim.backends.ray_backend import check_reachable

# What a gRPC server sends first: a SETTINGS frame (type 4) on stream 0, here empty.
SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


@contextmanager
def service(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback service whose `answer` handles each connection; yields its port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()

    def run() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                answer(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def grpc_like(conn: socket.socket) -> None:
    conn.recv(64)
    conn.sendall(SETTINGS)


def silent(conn: socket.socket) -> None:
    conn.recv(64)
    stop_after = threading.Event()
    stop_after.wait(1.0)  # holds the connection, says nothing


def http1(conn: socket.socket) -> None:
    conn.recv(64)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")


def closes(conn: socket.socket) -> None:
    conn.recv(64)


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_grpc_server_passes(scheme: str) -> None:
    with service(grpc_like) as port:
        check_reachable(f"{scheme}127.0.0.1:{port}", "--ray-address", timeout_s=5.0)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (silent, "takes TCP connections but did not answer as Ray's gRPC server in 0.5 s"),
        (http1, "answered, but not as Ray's gRPC server (it did not speak HTTP/2: its first "
                "bytes were b'HTTP'"),
        (closes, "answered, but not as Ray's gRPC server (it did not speak HTTP/2: it closed "
                 "the connection"),
    ],
    ids=["silent", "http1", "closes"],
)  # fmt: skip
@pytest.mark.parametrize(
    ("scheme", "port_hint"),
    [("", "the cluster's GCS port, 6379 by default"),
     ("ray://", "the Ray client server's port, 10001 by default")],
)  # fmt: skip
def test_a_service_that_is_not_ray_is_refused_in_one_line(
    answer: Callable[[socket.socket], None], why: str, scheme: str, port_hint: str
) -> None:
    with service(answer) as port:
        with pytest.raises(ConnectionError) as info:
            check_reachable(f"{scheme}127.0.0.1:{port}", "--ray-address", timeout_s=0.5)
    text = str(info.value)
    assert text.startswith(f"cannot reach a Ray cluster at {scheme}127.0.0.1:{port} (given by "
                           f"--ray-address): something there {why}")  # fmt: skip
    assert f"is it {port_hint}?" in text
    assert "\n" not in text


def test_with_rays_tls_on_only_the_connection_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # A TLS GCS expects a TLS handshake, not an HTTP/2 preface
    monkeypatch.setenv("RAY_USE_TLS", "1")
    with service(silent) as port:
        check_reachable(f"127.0.0.1:{port}", "--ray-address", timeout_s=0.5)


def test_a_real_gcs_passes() -> None:
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    if ray.is_initialized():
        pytest.skip("a Ray runtime is already running in this process")
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        check_reachable(ray.get_runtime_context().gcs_address, "--ray-address", timeout_s=5.0)
    finally:
        ray.shutdown()
