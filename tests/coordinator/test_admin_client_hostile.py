"""The admin client (and `plume coordinator status`) against a hostile or misconfigured server on
loopback: an encoded body is refused unread, an oversized one is refused at the cap, a trickled
one is abandoned after `max_response_s`, and each ends as one `AdminError` (one CLI line)."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from coordinator.cli import main
from coordinator.service import AdminClient, AdminError, ServerThread, ServiceConfig
from coordinator.service.admin_client import MAX_ADMIN_RESPONSE
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    await_assignment,
    create_task,
    initial_params,
    local_data,
    task_config,
    wait_until,
)

Answer = Callable[[socket.socket, threading.Event], None]
TASK_JSON = b'{"task_id": 1}'


class HostileServer:
    """`with HostileServer(answer) as url:` reads each request's head (and Content-Length body),
    keeps it in `requests`, then lets `answer(conn, stop)` write whatever it likes."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._threads: list[threading.Thread] = []
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> str:
        self._spawn(self._accept)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        except OSError:
            pass
        self._listener.close()
        for t in self._threads:
            t.join(5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed by __exit__
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                 if k.strip().lower() == b"content-length"),
                0,
            )  # fmt: skip
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append(head)
            try:
                self.answer(conn, self.stop)
            except OSError:
                pass  # the client hung up, as it should


def respond(status: bytes, headers: list[bytes], body: bytes = b"") -> Answer:
    """An answer written at once, then the connection closed."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers))
        conn.sendall(b"\r\n" + body)

    return answer


def endless(status: bytes, headers: list[bytes], piece: bytes, pause_s: float) -> Answer:
    """Headers, then `piece` every `pause_s` seconds until the client hangs up."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers))
        conn.sendall(b"\r\n")
        while not stop.is_set():
            conn.sendall(piece)
            if pause_s:
                time.sleep(pause_s)

    return answer


def held(status: bytes, headers: list[bytes]) -> Answer:
    """Headers only; the body never comes (the connection stays open until the test ends)."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers))
        conn.sendall(b"\r\n")
        stop.wait(30)

    return answer


def _zstd_bomb() -> bytes:
    """2 kB of zstd that inflates to 64 MiB of zeros (no content size in its header)."""
    import zstandard

    return zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))


def _bomb(encoding: str) -> bytes:
    return _zstd_bomb() if encoding == "zstd" else gzip.compress(bytes(64 << 20), 9)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_an_encoded_answer_is_refused_before_it_is_inflated(encoding: str) -> None:
    # Prepare: a 200 whose body is a decompression bomb (64 MiB of zeros, compressed)
    bomb = _bomb(encoding)
    headers = [b"content-type: application/json", b"content-encoding: " + encoding.encode(),
               b"content-length: %d" % len(bomb)]  # fmt: skip
    with HostileServer(respond(b"200 OK", headers, bomb)) as url:
        with AdminClient(url, ADMIN, timeout=5.0) as admin:
            # Execute
            tracemalloc.start()
            try:
                with pytest.raises(AdminError) as info:
                    admin.status(1)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    # Assert: refused for its encoding, never inflated (a few MiB at most, not 64)
    assert info.value.status == 200 and info.value.body == ""
    assert f"Content-Encoding {encoding!r}" in info.value.problem
    assert peak < 8 << 20, peak


def test_the_admin_client_asks_for_identity_bodies() -> None:
    # Prepare
    server = HostileServer(respond(b"200 OK", [b"content-length: 2"], b"[]"))
    # Execute
    with server as url, AdminClient(url, ADMIN) as admin:
        tasks = admin.tasks()
    # Assert
    assert tasks == []
    assert b"\r\naccept-encoding: identity" in server.requests[0].lower()


@pytest.mark.parametrize(
    "answer",
    [
        held(b"200 OK", [b"content-length: 100000000000"]),  # declared: refused unread
        endless(
            b"200 OK", [b"transfer-encoding: chunked"], b"4000\r\n" + b" " * 0x4000 + b"\r\n", 0
        ),
        endless(b"200 OK", [b"connection: close"], b"[" * 65536, 0),  # read to the close
    ],
    ids=["declared", "chunked", "close-delimited"],
)
def test_an_answer_above_the_cap_is_refused_at_the_cap(answer: Answer) -> None:
    # Prepare: a client with a 1 MiB cap; each server would send (far) more
    with (
        HostileServer(answer) as url,
        AdminClient(url, ADMIN, timeout=30.0, max_response_bytes=1 << 20) as admin,
    ):
        start = time.monotonic()
        # Execute
        with pytest.raises(AdminError) as info:
            admin.rounds(1)
        elapsed = time.monotonic() - start
    # Assert: refused without waiting for the rest (the held ones never send it)
    assert info.value.status == 200 and info.value.path == "/v1/admin/tasks/1/rounds"
    assert f"above the admin client's {1 << 20}-byte cap (max_response_bytes)" in str(info.value)
    assert elapsed < 10.0  # the held ones would have waited for the 30 s timeout


def test_a_trickled_answer_is_abandoned_after_max_response_s() -> None:
    # Prepare: one byte every 20 ms, each well inside the 5 s read timeout, forever
    answer = endless(b"200 OK", [b"connection: close"], b" ", 0.02)
    with (
        HostileServer(answer) as url,
        AdminClient(url, ADMIN, timeout=5.0, max_response_s=0.3) as admin,
    ):
        start = time.monotonic()
        # Execute
        with pytest.raises(AdminError) as info:
            admin.tasks()
        elapsed = time.monotonic() - start
    # Assert
    assert "not received whole within 0.3 s (max_response_s)" in info.value.problem
    assert elapsed < 10.0  # without max_response_s the trickle never ends


def test_a_huge_refusal_is_cut_to_its_first_64_kib() -> None:
    # Prepare: a 500 with a 16 MiB page (a proxy's error page, say)
    page = b"<html>" + b"x" * (16 << 20)
    with HostileServer(respond(b"500 Oops", [b"content-length: %d" % len(page)], page)) as url:
        with AdminClient(url, ADMIN, timeout=5.0) as admin:
            # Execute
            with pytest.raises(AdminError) as info:
                admin.pause(1)
    # Assert: the refusal is kept (its status, and the start of its body), not the whole page
    assert info.value.status == 500 and info.value.problem == ""
    assert info.value.body.startswith("<html>xxx") and len(info.value.body) == 64 << 10


@pytest.mark.parametrize("status", [b"200 OK", b"409 Conflict"])
def test_json_nested_too_deeply_is_an_admin_error_and_one_cli_line(
    status: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: "[[[[..." parses past Python's recursion limit (a RecursionError, not ValueError)
    body = b"[" * 50_000
    with HostileServer(respond(status, [b"content-length: %d" % len(body)], body)) as url:
        # Execute
        with AdminClient(url, ADMIN, timeout=5.0) as admin, pytest.raises(AdminError) as info:
            admin.status(1)
        code = main(["coordinator", "status", "--url", url, "--admin-token", ADMIN,
                     "--task", "1"])  # fmt: skip
    # Assert
    assert info.value.status == int(status[:3])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1 and "a body that is not the coordinator's JSON ([[[[" in line


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "plume coordinator status: error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            respond(b"200 OK", [b"content-encoding: gzip", b"content-length: 20"], b"x" * 20),
            "answered GET /v1/admin/tasks/1 with 200 and a body with Content-Encoding 'gzip', "
            "which the admin client asks not to get and does not inflate",
        ),
        (
            held(b"200 OK", [b"content-length: %d" % (MAX_ADMIN_RESPONSE + 1)]),
            f"answered GET /v1/admin/tasks/1 with 200 and a body above the admin client's "
            f"{MAX_ADMIN_RESPONSE}-byte cap (max_response_bytes); not read (--url)",
        ),
    ],
    ids=["encoded", "too-large"],
)
def test_plume_coordinator_status_says_what_it_refused_in_one_line(
    answer: Answer, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with HostileServer(answer) as url:
        # Execute
        code = main(["coordinator", "status", "--url", url, "--admin-token", ADMIN,
                     "--task", "1"])  # fmt: skip
    # Assert
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1 and f"{url} {expected}" in line


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_response_bytes": 0},
        {"max_response_s": 0.0},
        {"max_response_s": float("nan")},
        {"max_response_s": float("inf")},
    ],  # fmt: skip
)
def test_caps_that_are_no_caps_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="max_response"):
        AdminClient("http://127.0.0.1:1", ADMIN, **kwargs)  # type: ignore[arg-type]


def test_the_default_cap_holds_150000_rounds_of_a_real_task(tmp_path: Path) -> None:
    # Prepare: a real FedAvg task of 3 rounds, 2 devices
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(rounds=3))
        clients = [Client(url, str(tmp_path / f"dev{i}")) for i in range(2)]
        for c in clients:
            c.register()

        def run(i: int) -> None:
            x, y = local_data(i)
            for _ in range(3):
                clients[i].train_round(
                    await_assignment(clients[i], task_id), SoftmaxTrainer(), x, y
                )

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        for c in clients:
            c.close()
        # Execute: what the admin client reads, and the bytes it was
        with AdminClient(url, ADMIN) as admin:
            rounds = admin.rounds(task_id)
        size = len(http.get(f"/v1/admin/tasks/{task_id}/rounds",
                            headers={"authorization": f"Bearer {ADMIN}"}).content)  # fmt: skip
    # Assert: the cap's reasoning (admin_client.py) holds for this answer
    assert [r.state for r in rounds] == ["committed"] * 3
    assert size / 3 * 150_000 < MAX_ADMIN_RESPONSE, size


@pytest.mark.parametrize(
    ("call", "body"),
    [
        (lambda a: a.status(1), b"[]"),
        (lambda a: a.status(1), b'{"task_id": "one"}'),
        (lambda a: a.tasks(), b'{"task_id": 1}'),
        (lambda a: a.tasks(), b"[1, 2]"),
        (lambda a: a.rounds(1), b"null"),
        (lambda a: a.round(1), b'"committed"'),
        (lambda a: a.pause(1), b"{}"),
        (lambda a: a.bandwidth(1), b"[]"),
    ],
    ids=[
        "status-list",
        "status-bad-field",
        "tasks-object",
        "tasks-ints",
        "rounds-null",
        "round-string",
        "pause-empty",
        "bandwidth-list",
    ],  # fmt: skip
)
def test_json_of_the_wrong_shape_is_an_admin_error(
    call: Callable[[AdminClient], object], body: bytes
) -> None:
    # Prepare: another service (or version) answering 200 with JSON this client does not read
    answer = respond(b"200 OK", [b"content-length: %d" % len(body)], body)
    with HostileServer(answer) as url, AdminClient(url, ADMIN, timeout=5.0) as admin:
        # Execute
        with pytest.raises(AdminError) as info:
            call(admin)
    # Assert: an AdminError naming the problem, never a TypeError/KeyError from the parsing
    assert info.value.status == 200
    assert info.value.problem.startswith("an answer of the wrong shape, not read: ")


def test_create_task_refuses_a_task_id_that_is_not_an_integer() -> None:
    body = b'{"task_id": "7"}'
    answer = respond(b"200 OK", [b"content-length: %d" % len(body)], body)
    with HostileServer(answer) as url, AdminClient(url, ADMIN, timeout=5.0) as admin:
        with pytest.raises(AdminError, match="task_id '7' is not an integer"):
            admin.create_task(task_config(), initial_params())
