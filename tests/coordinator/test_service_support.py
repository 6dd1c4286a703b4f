"""Shared helpers for the coordinator service tests (no tests here): a numpy trainer, tasks,
a stepped clock for a secure task's stages (`drive_stages`, `expire_stage`), a served secure
task of 4 devices (`served_secure_task`), a polling wait (`poll_until`), a round close held
back until a round status is asked (`HeldClose`, `run_with_close_held`), the port a
coordinator subprocess started on `--port 0` got (`ServeProcess`, `logged_port`) and a URL
where nothing listens (`refused_url`)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import select
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from bench._common import listening_port
from compression import ModelSpec, encode_snapshot
from coordinator import _cli
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.app import create_app
from coordinator.service.rounds import Coordinator
from protocol import auth
from protocol.messages import CodecParams, TaskConfig, TensorShape, TrainingParams, to_json
from protocol.names import RoundState
from protocol.secagg import Stage
from sdk import Client, TrainResult

ADMIN = "test-admin-token"
# Signature headers of a valid form that no key made, for raw requests to POST /v1/devices that
# must get past the checks decided from the headers (the 401 `unsigned` is answered before the
# body is read) so that the body is read: the public key's 400 or the signature's 401 follow.
FORM_SIGNED = (
    b"x-plume-device: "
    + b"0" * 32
    + b"\r\nx-plume-timestamp: 0\r\nx-plume-nonce: "
    + b"0" * 32
    + b"\r\nx-plume-signature: "
    + b"A" * 86
    + b"\r\n"
)
SHAPES = [("w", (10, 16)), ("b", (10,))]
SPEC = ModelSpec.from_shapes(SHAPES)


class SoftmaxTrainer:
    """Multinomial logistic regression in numpy: a torch-free LocalTrainer for fast tests."""

    def train(
        self,
        params: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> TrainResult:
        w = params[:160].reshape(10, 16).astype(np.float64)
        b = params[160:].astype(np.float64)
        loss = 0.0
        for _ in range(epochs):
            for start in range(0, len(x), batch_size):
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]
                z = xb @ w.T + b
                z -= z.max(1, keepdims=True)
                p = np.exp(z)
                p /= p.sum(1, keepdims=True)
                loss = float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).mean())
                p[np.arange(len(yb)), yb] -= 1
                w -= lr * (p.T @ xb) / len(yb)
                b -= lr * p.mean(0)
        out = np.concatenate([w.ravel(), b]).astype(np.float32)
        return TrainResult(out, len(x), loss)


# uvicorn's line saying where it listens, which `serve` writes for the port `--port 0` got too
# (coordinator/service/server.py `_log_listening`), at INFO on stderr.
_LISTENING = re.compile(r"Uvicorn running on https?://(?:\[[^\]]*\]|[^\s:/]+):(\d+) ")


def _listening_port(text: str) -> int | None:
    """The port of the first complete `Uvicorn running on` line of `text`, if there is one."""
    for line in text.splitlines(keepends=True):
        if line.endswith("\n") and (found := _LISTENING.search(line)):
            return int(found[1])
    return None


def _not_listening(proc: subprocess.Popen[Any], seen: str, why: str) -> AssertionError:
    return AssertionError(
        f"the coordinator (pid {proc.pid}, {proc.args!r}) {why}; its output so far:\n{seen}"
    )


class ServeProcess(subprocess.Popen[str]):
    """A coordinator subprocess (`plume coordinator serve --port 0`, or a program calling
    `serve(..., port=0)`) with stdout and stderr piped as text; `listening_port()` is the port it
    got. Choosing a free port in the test and starting the server on it later raced: between
    the test's close and the server's bind, another process (a parallel test) could take it.

    It must log at INFO (the default level) or lower, since that is where uvicorn's `Uvicorn
    running on` line comes (else `logged=False`). `healthy_url()` waits for that port and for
    /healthz. `communicate()` returns stderr whole: the lines `listening_port` read, then the
    rest.

    Once the port is known, a thread keeps reading both pipes into memory until the process
    ends (`communicate` returns what it read). Before, nothing read them while the test ran, so
    a server that wrote more than a pipe holds (64 KiB on Linux) blocked in its next log call,
    and with it the request being served."""

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        super().__init__(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        self._read = ""
        self._drained: dict[int, bytearray] = {}
        self._drainer: threading.Thread | None = None
        self._stop_draining = threading.Event()

    def listening_port(self, timeout: float = 60.0, *, logged: bool = True) -> int:
        """The port of the `Uvicorn running on` line, once it is on stderr (within `timeout`
        seconds). The line comes when the port is bound, before uvicorn listens on it: wait
        for /healthz after, as for any start. Reads the raw pipe a byte at a time, so nothing
        after that line is read here (stderr's Python buffer stays empty for `communicate`).

        `logged=False`, for a process whose log level hides that line (`--log-level warning`):
        the port of the TCP socket it listens on, from Linux's /proc, once there is one."""
        if not logged:
            return self._proc_port(timeout)
        assert self.stderr is not None, "ServeProcess pipes stderr"
        fd = self.stderr.fileno()
        encoding = self.stderr.encoding if isinstance(self.stderr, io.TextIOWrapper) else "utf-8"
        seen = bytearray()
        give_up = time.monotonic() + timeout
        port: int | None = None
        why = f"said no listening port in {timeout:g} s"
        while port is None and (left := give_up - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                continue
            byte = os.read(fd, 1)
            if not byte:
                why = f"exited with status {self.wait(timeout=30)} before listening"
                break
            seen += byte
            if byte == b"\n":
                port = _listening_port(seen.decode(encoding, "replace"))
        text = seen.decode(encoding, "replace").replace("\r\n", "\n")
        self._read += text
        if port is None:
            raise _not_listening(self, text, why)
        self._drain()
        return port

    def _proc_port(self, timeout: float) -> int:
        give_up = time.monotonic() + timeout
        while (port := listening_port(self.pid)) is None:
            if self.poll() is not None:
                _, err = self.communicate()
                raise _not_listening(self, err, f"exited with status {self.returncode}")
            if time.monotonic() > give_up:
                raise _not_listening(self, "(not read)", f"listened on no port in {timeout:g} s")
            time.sleep(0.02)
        self._drain()
        return port

    def _drain(self) -> None:
        """Start the thread that empties both pipes (once; raw reads, so the file objects'
        buffers stay empty). It stops at the end of both, or soon after `_stop_draining`."""
        if self._drainer is not None:
            return
        pipes = [p.fileno() for p in (self.stdout, self.stderr) if p is not None]
        self._drained = {fd: bytearray() for fd in pipes}

        def run() -> None:
            open_fds = list(pipes)
            while open_fds and not self._stop_draining.is_set():
                for fd in select.select(open_fds, [], [], 0.05)[0]:
                    chunk = os.read(fd, 65536)
                    if chunk:
                        self._drained[fd] += chunk
                    else:
                        open_fds.remove(fd)

        self._drainer = threading.Thread(target=run, name=f"drain-{self.pid}", daemon=True)
        self._drainer.start()

    def _drained_text(self, pipe: Any) -> str:
        if pipe is None:
            return ""
        encoding = pipe.encoding if isinstance(pipe, io.TextIOWrapper) else "utf-8"
        got = bytes(self._drained.get(pipe.fileno(), b""))
        return got.decode(encoding, "replace").replace("\r\n", "\n")

    def _stop_drain(self) -> None:
        self._stop_draining.set()
        if self._drainer is not None:
            self._drainer.join()

    def __exit__(self, *exc: Any) -> None:
        # The thread must be done with the pipes before Popen.__exit__ closes them.
        self._stop_drain()
        super().__exit__(*exc)

    def healthy_url(self, timeout: float = 60.0, *, logged: bool = True) -> str:
        """`http://127.0.0.1:PORT`, PORT `listening_port(logged=logged)`, once its /healthz
        answers 200 (all within `timeout` seconds); the process's output if it exits first."""
        give_up = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.listening_port(timeout, logged=logged)}"
        while time.monotonic() < give_up:
            assert self.poll() is None, self.communicate()
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the coordinator at {url} did not answer /healthz in {timeout:g} s")

    def communicate(
        self, input: str | None = None, timeout: float | None = None
    ) -> tuple[Any, Any]:
        if self._drainer is None:
            out, err = super().communicate(input, timeout)
        else:
            # The thread reads the pipes to their end: wait for the process, then for it.
            self.wait(timeout)
            self._drainer.join(timeout)
            if self._drainer.is_alive():  # a child of the server holds the pipes open
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            out, err = self._drained_text(self.stdout), self._drained_text(self.stderr)
            self._drained = {fd: bytearray() for fd in self._drained}
        read, self._read = self._read, ""
        return out, read + (err or "")


def logged_port(proc: subprocess.Popen[Any], log: Path, timeout: float = 60.0) -> int:
    """The port of the `Uvicorn running on` line a coordinator subprocess (started with
    `--port 0`, its stderr going to the file `log`, at INFO or lower) writes there, within
    `timeout` seconds: `ServeProcess.listening_port` for a process whose output is a file (one
    that runs long, whose pipe nobody would empty). Wait for /healthz after it."""
    give_up = time.monotonic() + timeout
    while True:
        exited = proc.poll() is not None
        text = log.read_text(errors="replace") if log.exists() else ""
        if (port := _listening_port(text)) is not None:
            return port
        if exited:
            why = f"exited with status {proc.returncode} before listening"
            raise _not_listening(proc, text, why)
        if time.monotonic() > give_up:
            raise _not_listening(proc, text, f"said no listening port in {timeout:g} s")
        time.sleep(0.02)


def start_logged(
    argv: list[str], log: Path, timeout: float = 60.0, **popen: Any
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start the coordinator `argv` (`--port 0`, at log level info or lower) with its stderr,
    and its stdout unless `popen` says where, going to the file `log`: (its URL, the process)
    once `logged_port` has its port and /healthz answers 200, all within `timeout` seconds.
    A process that does not come up is killed, and the error shows its log."""
    give_up = time.monotonic() + timeout
    with log.open("w") as sink:
        popen.setdefault("stdout", sink)
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, stderr=sink, **popen)
    try:
        url = f"http://127.0.0.1:{logged_port(proc, log, timeout)}"
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    return url, proc
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise _not_listening(proc, log.read_text(errors="replace"), "exited")
            if time.monotonic() > give_up:
                why = f"did not answer /healthz at {url} in {timeout:g} s"
                raise _not_listening(proc, log.read_text(errors="replace"), why)
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise


@pytest.fixture(name="url")
def loopback_url(tmp_path: Path) -> Iterator[str]:
    """Fixture `url`: a coordinator on loopback for one test (a `ServerThread` on a database
    in `tmp_path`, ADMIN's token, a 0.05 s poll and a 0.02 s tick), as its URL. A test module
    takes it with `from tests.coordinator.test_service_support import loopback_url`."""
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    with ServerThread(cfg) as served:
        yield served


@contextlib.contextmanager
def refused_url() -> Iterator[str]:
    """`http://127.0.0.1:PORT` where nothing listens while the block runs: a socket bound to the
    port but not listening holds it, so a connect there is refused and no other socket (a
    server a parallel test starts) can bind the port meanwhile. A port found free and closed
    before use could be taken, and answer, by the time the test connects."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


def local_data(seed: int, n: int = 40) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(10, 16))
    y = rng.integers(0, 10, n)
    x = (centers[y] + 0.3 * rng.normal(size=(n, 16))).astype(np.float32)
    return x, y.astype(np.int64)


def task_config(**over: Any) -> TaskConfig:
    cfg = TaskConfig(
        name="test",
        model_name="softmax",
        spec=[TensorShape(n, list(s)) for n, s in SHAPES],
        rounds=3,
        clients_per_round=2,
        over_selection=1.0,
        deadline_s=30.0,
        min_reports=1,
        selection_timeout_s=5.0,
        codec=CodecParams(topk=0.25, bits=8),
        downlink=CodecParams(topk=0.5, bits=8),
        training=TrainingParams(local_epochs=1, batch_size=10, lr=0.1),
        retry_after_s=0.2,
    )
    return replace(cfg, **over)


def initial_params() -> npt.NDArray[np.float32]:
    return np.random.default_rng(0).normal(0, 0.1, SPEC.size).astype(np.float32)


@contextlib.contextmanager
def _client(at: httpx.Client | str) -> Iterator[httpx.Client]:
    """`at` if it is a client, else a client of the base URL `at`, closed after (one left to
    the collector warns of its socket in whatever test is running then)."""
    if isinstance(at, httpx.Client):
        yield at
    else:
        with httpx.Client(base_url=at) as http:
            yield http


def create_task(at: httpx.Client | str, cfg: TaskConfig | None = None) -> int:
    """Create a task and upload its initial model through the admin API (`at`: a client, or
    the coordinator's URL)."""
    auth = {"authorization": f"Bearer {ADMIN}"}
    with _client(at) as http:
        r = http.post("/v1/admin/tasks", json=to_json(cfg or task_config()), headers=auth)
        assert r.status_code == 201, r.text
        task_id = int(r.json()["task_id"])
        snap = encode_snapshot(initial_params(), SPEC, "fp32")
        r = http.put(
            f"/v1/admin/tasks/{task_id}/model",
            content=snap,
            headers={**auth, "content-type": "application/octet-stream"},
        )
    assert r.status_code == 200, r.text
    return task_id


def rewrite_stored_config(db: Path, task_id: int, **changes: Any) -> str:
    """Rewrite the config a task's row holds in the database at `db` (no store open on it),
    `changes` merged in, as a store written before a check existed holds it: the JSON stored."""
    con = sqlite3.connect(db)
    (raw,) = con.execute("SELECT config_json FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    stored = json.dumps(json.loads(raw) | changes)
    con.execute("UPDATE tasks SET config_json=? WHERE task_id=?", (stored, task_id))
    con.commit()
    con.close()
    return stored


def admin_get(at: httpx.Client | str, path: str) -> Any:
    """The JSON of an admin GET of `path` (`at`: a client, or the coordinator's URL)."""
    with _client(at) as http:
        r = http.get(path, headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    return r.json()


def signed_headers(
    key: bytes,
    method: str,
    target: str,
    round_id: int,
    body: bytes = b"",
    timestamp_ms: int | None = None,
) -> dict[str, str]:
    """The headers that sign a device's request with its key (`protocol.auth.sign_request`),
    timestamped now unless `timestamp_ms` is given."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    signed = auth.sign_request(
        key, method=method, target=target, round_id=round_id, body=body, timestamp_ms=ts
    )
    return {str(k): v for k, v in signed.items()}


def send_signed(
    http: httpx.Client,
    client: Any,
    method: str,
    path: str,
    round_id: int,
    *,
    params: dict[str, str] | None = None,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """`method path` sent through `http` (with `params`, `body` and `headers`), signed by
    `client` (an sdk Client) for `round_id` over the request's target as sent."""
    req = http.build_request(method, path, params=params, content=body, headers=headers)
    req.headers.update(
        signed_headers(client._core.key, method, req.url.raw_path.decode(), round_id, body)
    )
    return http.send(req)


OPEN_DEVICES: list[Client] = []


def device_client(url: str, app_dir: str, **kw: Any) -> Client:
    """An sdk `Client` (`Client(url, app_dir, **kw)`) that tests/coordinator/conftest.py closes
    when the test ends, if the test did not: left open, a client that made a request keeps its
    sockets until a garbage collection, whose ResourceWarning lands in whatever test runs then."""
    client = Client(url, app_dir, **kw)
    OPEN_DEVICES.append(client)
    return client


def await_assignment(client: Any, task_id: int, timeout: float = 20.0) -> Any:
    """Check `client` (an sdk Client) in to `task_id` until it gets an assignment; returns it."""
    import time

    give_up = time.monotonic() + timeout
    while True:
        answer = client.check_in(task_id)
        if answer.assignment is not None:
            return answer.assignment
        assert time.monotonic() < give_up, "no assignment"
        time.sleep(min(answer.retry_after_s, 0.05))


def wait_until(
    at: httpx.Client | str, path: str, key: str, value: Any, timeout: float = 60.0
) -> Any:
    """Poll an admin JSON endpoint until `body[key] == value`, and return that body (closes run
    asynchronously; `at`: a client, or the coordinator's URL). Fails, with the last body, if
    `timeout` seconds pass first: it used to return that body instead, and a caller that did
    not check it went on as if the state had been reached. The bound is for a hang, not a
    pace: 60 s, where 15 s could run out on a loaded machine."""
    deadline = time.monotonic() + timeout
    with _client(at) as http:
        while True:
            body = admin_get(http, path)
            if body[key] == value:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {key} is not {value!r} after {timeout} s: {body}")
            time.sleep(0.02)


@contextlib.contextmanager
def task_server(root: Path) -> Iterator[httpx.Client]:
    """A loopback coordinator in `root` holding one task (`create_task`), as an httpx client."""
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as client:
        create_task(client)
        yield client


def serve_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Callable[..., int], list[ServiceConfig]]:
    """`plume coordinator serve` recording its ServiceConfig instead of serving: (run, the
    configs it was called with), where `run(*flags)` parses and runs the command and returns
    its exit code (argparse's usage errors and --help raise SystemExit)."""
    import coordinator.service as service

    seen: list[ServiceConfig] = []
    monkeypatch.setattr(service, "serve", lambda config, *a, **kw: seen.append(config))
    parser = argparse.ArgumentParser()
    _cli.register(parser.add_subparsers())

    def run(*flags: str) -> int:
        args = parser.parse_args(["coordinator", "serve", *flags])
        code: int = args.func(args)
        return code

    return run, seen


def serve_fast(tmp_path: Path) -> Iterator[ServerThread]:
    """A fixture body (`served = pytest.fixture(serve_fast, name="served")`): a loopback
    coordinator on tmp_path/plume.db that polls every 50 ms and ticks every 20 ms, as its
    ServerThread (`.url`; `.app.state.coordinator` for a test that moves its clock)."""
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    thread = ServerThread(cfg)
    with thread:
        yield thread


class StageClock:
    """The secure registry's clock, stepped by the test instead of by time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def drive_stages(coordinator: Any, task_id: int) -> StageClock:
    """Time the secure task's stages by a `StageClock`: a stage closes early once every device
    in it uploaded, and times out only when the test moves the clock (`expire_stage`). Set it
    before any device checks in, so before the task's first round opens."""
    clock = StageClock()
    coordinator.runtimes[task_id].secure.registry.clock = clock
    return clock


def expire_stage(
    coordinator: Any,
    task_id: int,
    clock: StageClock,
    stage: Stage,
    uploads: int,
    silent: Sequence[threading.Thread] = (),
) -> None:
    """Time out `stage` of the task's open round once it holds all it will get
    (`await_stage`). The coordinator's ticker then closes it with those, as at its timeout."""
    await_stage(coordinator, task_id, stage, uploads, silent)
    clock.advance(coordinator.runtimes[task_id].secure.registry.stage_timeout_s)


@contextlib.contextmanager
def served_secure_task(
    tmp_path: Path, name: str, admin: str, stage_timeout_s: float
) -> Iterator[tuple[str, Any, int]]:
    """A coordinator on loopback with one secure task `name` of 4 devices (one group,
    min_reports 3, a 60 s deadline, `stage_timeout_s` stages, coord_fraction 0.5) and its
    initial model, the 4x8 + 4 zeros: (url, its Coordinator, task id)."""
    spec = ModelSpec.from_shapes([("w", (4, 8)), ("b", (4,))])
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=admin, poll_s=0.05, tick_s=0.02
    )
    app = create_app(cfg)
    task = TaskConfig(
        name=name, model_name="tiny",
        spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
        rounds=1, clients_per_round=4, over_selection=1.0, min_reports=3,
        selection_timeout_s=60.0, deadline_s=60.0, downlink=CodecParams(topk=1.0, bits=32),
        training=TrainingParams(1, 8, 0.1), retry_after_s=0.2,
        secure={"coord_fraction": 0.5, "stage_timeout_s": stage_timeout_s},
    )  # fmt: skip
    with ServerThread(cfg, app=app) as url:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {admin}"}) as http:
            task_id = int(http.post("/v1/admin/tasks", json=to_json(task)).json()["task_id"])
            snap = encode_snapshot(np.zeros(spec.size, np.float32), spec, "fp32")
            octet = {"content-type": "application/octet-stream"}
            r = http.put(f"/v1/admin/tasks/{task_id}/model", content=snap, headers=octet)
            assert r.status_code == 200
        yield url, app.state.coordinator, task_id


class HeldClose:
    """Every coordinator's close (`Coordinator.close_blocking`: the aggregation and the publish)
    of a round in `rounds` (None: every round) waits until `release()`, or with `on_status`
    until a round's status has been asked (`GET /v1/rounds/{id}`) and answered while the close
    was held: the order a loaded machine can give, where the coordinator answers the request
    that ends a round and closes it afterwards (`schedule_close`). `states` are the states the
    status answers gave. The wait is bounded (60 s), so that a test that never releases it
    fails instead of hanging the server's shutdown."""

    HOLD_S = 60.0

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, *, on_status: bool, rounds: set[int] | None = None
    ) -> None:
        self.released = threading.Event()
        self.states: list[str] = []
        close_blocking = Coordinator.close_blocking
        round_status = Coordinator.round_status

        def held_close(coordinator: Coordinator, rt: Any, cur: Any) -> Any:
            if rounds is None or cur.round_id in rounds:
                self.released.wait(self.HOLD_S)
            return close_blocking(coordinator, rt, cur)

        def status(coordinator: Coordinator, *args: Any, **kwargs: Any) -> Any:
            answer = round_status(coordinator, *args, **kwargs)
            self.states.append(str(answer.state))
            if on_status:
                self.release()
            return answer

        monkeypatch.setattr(Coordinator, "close_blocking", held_close)
        monkeypatch.setattr(Coordinator, "round_status", status)

    def release(self) -> None:
        self.released.set()


def run_with_close_held(
    monkeypatch: pytest.MonkeyPatch, test: Callable[[], None], rounds: set[int] | None = None
) -> list[str]:
    """Run `test` with the close of `rounds` held until a round status is asked (`HeldClose`),
    and check that it asked while the round was not committed and waited for the commit: a
    test that reads a round's outcome right after its last upload fails here. The states its
    status requests saw."""
    held = HeldClose(monkeypatch, on_status=True, rounds=rounds)
    try:
        test()
    finally:
        held.release()
    assert held.states[0] != RoundState.COMMITTED, held.states
    assert held.states[-1] == RoundState.COMMITTED, held.states
    return held.states


def poll_until(cond: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll `cond` every 10 ms until it holds; fail with `what` after `timeout_s`."""
    give_up = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < give_up, what
        time.sleep(0.01)


def await_stage(
    coordinator: Any,
    task_id: int,
    stage: Stage,
    uploads: int,
    silent: Sequence[threading.Thread] = (),
) -> None:
    """Wait until the secure task's open round is at `stage` with `uploads` uploads of it, all
    it will get: every thread in `silent` (devices that will not upload it) has ended."""
    registry = coordinator.runtimes[task_id].secure.registry
    give_up = time.monotonic() + 60
    at: Stage | None = None
    counts: dict[str, int] = {}
    while True:
        cur = coordinator.runtimes[task_id].current
        if cur is not None and not any(t.is_alive() for t in silent):
            try:
                at = registry.current_stage(cur.round_id)
                counts = registry.stage_counts(cur.round_id)
            except LookupError:  # the round closed meanwhile
                at, counts = None, {}
            if at == stage and counts.get(str(stage)) == uploads:
                break
        assert time.monotonic() < give_up, (
            f"never at {stage} with {uploads} uploads (at {at}, uploads {counts})"
        )
        time.sleep(0.01)
