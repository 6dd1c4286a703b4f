"""`Client.participate(..., cancel=event)`: an app whose OS stops its background work (Android's
`onStopJob`, an iOS task's expiration) sets the event from another thread, and the call ends
with `ParticipationCancelled`, leaving the app directory as a crash at that point would.

Before, the sync client had no way to stop: the wait between check-ins slept its whole length
and training ran to its end. Against a real coordinator on loopback; the interleavings are
forced with events (a mod or a trainer that signals, then waits for the test), not sleeps.
An `AsyncClient` task cancelled with `Task.cancel()` is checked here too."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from coordinator.service import ServerThread, ServiceConfig
from sdk import AsyncClient, Client, ClientError, TrainResult
from sdk.client import CANCELLED, ParticipationCancelled
from sdk.trainer import TorchTrainer
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
)

X, Y = local_data(3)  # 40 examples: 4 steps of 10 per epoch
LONG = 15.0  # how long a test waits for an event before it fails (never reached when it passes)
# How soon after the app's cancel a call must have ended: far above the few ms it takes, even on a
# loaded machine, and a third of the 30 s wait, backoff or timeout each test's cancel cuts short.
CANCEL_S = 10.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, httpx.Client]]:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        yield url, http


class Requests:
    """A client mod that counts requests by path and can act on one (`hook(request, send)`)."""

    def __init__(self, hook: Callable[[httpx.Request, Any], httpx.Response] | None = None) -> None:
        self.paths: list[str] = []
        self.hook = hook

    def __call__(self, request: httpx.Request, nxt: Any) -> httpx.Response:
        self.paths.append(request.url.path)
        if self.hook is not None:
            return self.hook(request, nxt)
        response: httpx.Response = nxt(request)
        return response

    def count(self, part: str) -> int:
        return sum(part in p for p in self.paths)


def _files(app_dir: Path) -> dict[str, bytes]:
    """The residual and pending-upload files of an app directory, by name."""
    return {
        p.name: p.read_bytes()
        for p in sorted(app_dir.iterdir())
        if p.name.startswith(("residual", "pending"))
    }


def _one_round(url: str, app_dir: Path, task_id: int) -> None:
    """A first round, so that the device holds a residual the next round must not lose."""
    with Client(url, str(app_dir)) as device:
        device.register()
        assert device.participate(SoftmaxTrainer(), X, Y, task_id=task_id) is not None


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `call` on a worker thread (as an app's background job); its outcome lands in the dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            out["error"] = exc
        out["ended"] = time.monotonic()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker, out


def test_a_cancel_set_before_participate_sends_nothing(
    served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    url, http = served
    task_id = create_task(http, task_config(clients_per_round=1))
    count = Requests()
    cancel = threading.Event()
    cancel.set()
    with Client(url, str(tmp_path / "dev"), mods=(count,)) as device:
        device.register()
        with pytest.raises(ParticipationCancelled) as caught:
            device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, cancel=cancel)
    assert isinstance(caught.value, ClientError)
    assert (caught.value.status, caught.value.reason) == (0, CANCELLED)
    assert caught.value.phase == "check-in" and caught.value.round_id is None
    assert count.paths == ["/v1/devices"]


def test_a_cancel_ends_the_wait_between_check_ins_at_once(
    served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    # Prepare: two devices per round and one device: every check-in is answered "wait", and
    # the app waits 30 s between them.
    url, http = served
    task_id = create_task(http, task_config(clients_per_round=2))
    checked = threading.Event()

    def signal(request: httpx.Request, nxt: Any) -> httpx.Response:
        response: httpx.Response = nxt(request)
        if request.url.path == "/v1/checkin":
            checked.set()
        return response

    count = Requests(signal)
    cancel = threading.Event()
    with Client(url, str(tmp_path / "dev"), mods=(count,)) as device:
        device.register()
        worker, out = _in_thread(
            lambda: device.participate(
                SoftmaxTrainer(),
                X,
                Y,
                task_id=task_id,
                min_poll_s=30.0,
                max_wait_s=60.0,
                cancel=cancel,
            )  # fmt: skip
        )
        # Execute: cancel once the first check-in has been answered
        assert checked.wait(LONG)
        set_at = time.monotonic()
        cancel.set()
        worker.join(LONG)
    # Assert: ended within a fraction of the 30 s wait, after one check-in
    assert not worker.is_alive()
    err = out["error"]
    assert isinstance(err, ParticipationCancelled) and err.phase == "wait", err
    assert out["ended"] - set_at < CANCEL_S
    assert count.count("/v1/checkin") == 1


class _Gated(nn.Module):
    """A softmax model (the task's layout) whose second training step tells the test it has
    started, then waits for the test to set `cancel`: a slow step, made slow on purpose."""

    def __init__(self, cancel: threading.Event, started: threading.Event) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 10)
        self.cancel, self.started = cancel, started
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and len(x) > 1:  # not the one-example probe of the output shape
            self.steps += 1
            if self.steps == 2:
                self.started.set()
                assert self.cancel.wait(LONG)
        out: torch.Tensor = self.fc(x)
        return out


def test_a_cancel_stops_torch_training_within_one_step_and_keeps_the_residual(
    served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    # Prepare: a first round leaves a residual; the second round's training blocks in step 2
    url, http = served
    task_id = create_task(http, task_config(clients_per_round=1, rounds=3))
    app_dir = tmp_path / "dev"
    _one_round(url, app_dir, task_id)
    held = _files(app_dir)
    assert any(name.startswith("residual") for name in held) and "pending.json" not in held
    cancel, started = threading.Event(), threading.Event()
    module = _Gated(cancel, started)
    trainer = TorchTrainer(module, fast_linear=False, fast_pool=False)
    count = Requests()
    with Client(url, str(app_dir), mods=(count,)) as device:
        worker, out = _in_thread(
            lambda: device.participate(trainer, X, Y, task_id=task_id, cancel=cancel)
        )
        # Execute
        assert started.wait(LONG)
        set_at = time.monotonic()
        cancel.set()
        worker.join(LONG)
    # Assert: stopped before step 3 of 4; nothing encoded, uploaded or kept
    err = out["error"]
    assert isinstance(err, ParticipationCancelled) and err.phase == "training", err
    assert err.round_id is not None and "after 2 steps" in err.detail
    assert module.steps == 2
    assert out["ended"] - set_at < CANCEL_S
    assert count.count("/updates") == 0
    assert _files(app_dir) == held


class _CancelsAtItsEnd(SoftmaxTrainer):
    """A trainer that does not take `cancel`: the app's event is set while it trains."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

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
        result = super().train(params, x, y, epochs=epochs, batch_size=batch_size, lr=lr, rng=rng)
        self.cancel.set()
        return result


def test_a_cancel_during_a_trainer_without_cancel_stops_before_the_upload(
    served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    url, http = served
    task_id = create_task(http, task_config(clients_per_round=1, rounds=3))
    app_dir = tmp_path / "dev"
    _one_round(url, app_dir, task_id)
    held = _files(app_dir)
    cancel = threading.Event()
    count = Requests()
    with Client(url, str(app_dir), mods=(count,)) as device:
        with pytest.raises(ParticipationCancelled) as caught:
            device.participate(_CancelsAtItsEnd(cancel), X, Y, task_id=task_id, cancel=cancel)
    assert caught.value.phase == "training"
    assert count.count("/updates") == 0 and count.count("/model") == 1
    assert _files(app_dir) == held  # the residual as before the round, nothing pending


def test_a_cancel_while_the_upload_is_in_flight_leaves_it_pending_for_the_next_call(
    served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    # Prepare: the upload reaches the coordinator, and the app's cancel comes while its answer
    # is on the way; the answer is then lost (a read timeout), as when the OS cut the network.
    url, http = served
    task_id = create_task(http, task_config(clients_per_round=1, rounds=3))
    app_dir = tmp_path / "dev"
    cancel = threading.Event()

    def lose_the_answer(request: httpx.Request, nxt: Any) -> httpx.Response:
        response: httpx.Response = nxt(request)
        if "/updates" in request.url.path:
            cancel.set()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    count = Requests(lose_the_answer)
    with Client(url, str(app_dir), mods=(count,)) as device:
        device.register()
        # Execute
        with pytest.raises(ParticipationCancelled) as caught:
            device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, cancel=cancel)
        # Assert: no retry after the cancel; the upload is pending, as after a crash
        assert caught.value.phase == "upload" and count.count("/updates") == 1
        assert "pending.json" in _files(app_dir)
    with Client(url, str(app_dir)) as device:
        receipt = device.resume_pending()
    assert receipt is not None and receipt.accepted and receipt.duplicate  # taken once
    assert "pending.json" not in _files(app_dir)


def test_a_cancel_after_the_upload_was_answered_returns_the_round(
    served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    url, http = served
    task_id = create_task(http, task_config(clients_per_round=1, rounds=3))
    app_dir = tmp_path / "dev"
    cancel = threading.Event()

    def cancel_late(request: httpx.Request, nxt: Any) -> httpx.Response:
        response: httpx.Response = nxt(request)
        if "/updates" in request.url.path:
            cancel.set()
        return response

    with Client(url, str(app_dir), mods=(Requests(cancel_late),)) as device:
        device.register()
        report = device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, cancel=cancel)
    assert report is not None and report.receipt.accepted
    assert "pending.json" not in _files(app_dir)


def test_a_cancel_before_a_retry_of_the_check_in_does_not_wait_out_the_backoff(
    served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    # A 503 answer: the client would retry after backoff_s (30 s here); the cancel comes first.
    url, _ = served
    cancel = threading.Event()
    answered = threading.Event()

    def unavailable(request: httpx.Request, nxt: Any) -> httpx.Response:
        if request.url.path == "/v1/checkin":
            answered.set()
            return httpx.Response(503, json={"reason": "busy", "detail": ""}, request=request)
        response: httpx.Response = nxt(request)
        return response

    count = Requests(unavailable)
    with Client(url, str(tmp_path / "dev"), mods=(count,), backoff_s=30.0) as device:
        device.register()
        worker, out = _in_thread(lambda: device.participate(SoftmaxTrainer(), X, Y, cancel=cancel))
        assert answered.wait(LONG)
        set_at = time.monotonic()
        cancel.set()
        worker.join(LONG)
    err = out["error"]
    assert isinstance(err, ParticipationCancelled) and err.phase == "check-in", err
    assert out["ended"] - set_at < CANCEL_S
    assert count.count("/v1/checkin") == 1


def test_an_async_participate_cancelled_during_its_upload_leaves_it_pending(
    served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    # AsyncClient has no `cancel`: an asyncio app cancels the task. Cancelled while the upload
    # it sent waits for its answer, the upload stays pending, as with the sync client.
    url, http = served
    task_id = create_task(http, task_config(clients_per_round=1, rounds=3))
    app_dir = tmp_path / "dev"

    async def run() -> None:
        in_flight = asyncio.Event()

        async def hold_the_answer(request: httpx.Request, nxt: Any) -> httpx.Response:
            response: httpx.Response = await nxt(request)
            if "/updates" in request.url.path:
                in_flight.set()
                await asyncio.Event().wait()  # until cancelled
            return response

        async with AsyncClient(url, str(app_dir), mods=(hold_the_answer,)) as device:
            await device.register()
            task = asyncio.create_task(device.participate(SoftmaxTrainer(), X, Y, task_id=task_id))
            await asyncio.wait_for(in_flight.wait(), LONG)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert "pending.json" in _files(app_dir)
        async with AsyncClient(url, str(app_dir)) as device:
            receipt = await device.resume_pending()
        assert receipt is not None and receipt.accepted and receipt.duplicate

    asyncio.run(run())
    assert "pending.json" not in _files(app_dir)


class _Stalls:
    """A TCP server on loopback that reads a request and never answers it (`received` is set
    when a request has arrived): a coordinator behind a network that stopped."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.received = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while b"\r\n\r\n" not in conn.recv(65536):
                pass
            self.received.set()
            self.done.wait(LONG)

    def close(self) -> None:
        self.done.set()
        self.listener.close()


def test_a_cancel_ends_a_check_in_whose_answer_never_comes(tmp_path: Path) -> None:
    # Prepare: the answer would be waited for `timeout` (30 s) and retried; the cancel comes
    # while the request waits for its answer.
    server = _Stalls()
    cancel = threading.Event()
    try:
        with Client(server.url, str(tmp_path / "dev"), timeout=30.0) as device:
            worker, out = _in_thread(
                lambda: device.participate(SoftmaxTrainer(), X, Y, cancel=cancel)
            )
            assert server.received.wait(LONG)
            set_at = time.monotonic()
            cancel.set()
            worker.join(LONG)
    finally:
        server.close()
    err = out["error"]
    assert isinstance(err, ParticipationCancelled) and err.phase == "check-in", err
    assert out["ended"] - set_at < CANCEL_S


class _HoldsTheUploadAnswer:
    """A TCP proxy on loopback in front of the coordinator that passes every byte, except the
    answer to an upload (`POST /v1/rounds/...`): it is held back, and `holding` set once its
    first bytes arrive (the coordinator has taken the upload)."""

    def __init__(self, target: str) -> None:
        self.target = ("127.0.0.1", int(target.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.holding = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target)
            seen = threading.Event()  # this connection carried an upload
            threading.Thread(target=self._up, args=(conn, upstream, seen), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, conn, seen), daemon=True).start()

    def _up(self, conn: socket.socket, upstream: socket.socket, seen: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                if b"POST /v1/rounds/" in data:
                    seen.set()
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.close()

    def _down(self, upstream: socket.socket, conn: socket.socket, seen: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if seen.is_set():  # HTTP/1.1, no pipelining: the upload's answer
                    self.holding.set()
                    continue
                conn.sendall(data)
        with contextlib.suppress(OSError):
            conn.close()

    def close(self) -> None:
        self.listener.close()


def test_a_cancel_ends_an_upload_in_flight_and_the_next_call_resumes_it(
    served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    # Prepare: the coordinator took the upload; its answer does not come (timeout 30 s).
    url, http = served
    task_id = create_task(http, task_config(clients_per_round=1, rounds=3))
    app_dir = tmp_path / "dev"
    proxy = _HoldsTheUploadAnswer(url)
    cancel = threading.Event()
    try:
        with Client(proxy.url, str(app_dir), timeout=30.0) as device:
            device.register()
            worker, out = _in_thread(
                lambda: device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, cancel=cancel)
            )
            # Execute
            assert proxy.holding.wait(LONG)
            set_at = time.monotonic()
            cancel.set()
            worker.join(LONG)
    finally:
        proxy.close()
    # Assert: ended at once, the upload pending as after a crash; re-sent, taken once
    err = out["error"]
    assert isinstance(err, ParticipationCancelled) and err.phase == "upload", err
    assert out["ended"] - set_at < CANCEL_S
    assert "pending.json" in _files(app_dir)
    with Client(url, str(app_dir)) as device:
        receipt = device.resume_pending()
    assert receipt is not None and receipt.accepted and receipt.duplicate


def _secure_task(http: httpx.Client) -> int:
    """A secure task of three devices a round (the same SecAgg+ settings as
    tests/sdk/test_client_secure.py), its stage timeout long: a test that waited for it fails."""
    secure = {"coord_fraction": 0.5, "stage_timeout_s": 30.0}
    cfg = task_config(clients_per_round=3, min_reports=3, rounds=2, secure=secure)
    return create_task(http, replace(cfg, selection_timeout_s=60.0))


@pytest.mark.parametrize("after", ["advertise-keys", "masked-input"])
def test_a_cancel_during_a_secure_round_drops_the_device_out_as_a_crash_would(
    served: tuple[str, httpx.Client], tmp_path: Path, after: str
) -> None:
    # Prepare: a first round of all three devices, so that device 0 holds a residual the
    # cancelled round must keep (or replace, once its masked input was sent). In the second
    # round device 0's cancel is set once its `after` stage upload is answered; the two others
    # are cancelled once it has stopped, so nothing waits for a stage timeout.
    url, http = served
    task_id = _secure_task(http)
    cancels = [threading.Event() for _ in range(3)]
    armed = threading.Event()  # the second round
    set_at: list[float] = []

    def cancel_after(request: httpx.Request, nxt: Any) -> httpx.Response:
        response: httpx.Response = nxt(request)
        if (
            armed.is_set()
            and request.method == "POST"
            and request.url.path.endswith(f"/stages/{after}")
        ):
            set_at.append(time.monotonic())
            cancels[0].set()
        return response

    devices = [
        Client(url, str(tmp_path / f"d{i}"), mods=(Requests(cancel_after),) if i == 0 else ())
        for i in range(3)
    ]
    for device in devices:
        device.register()

    def participate_all(with_cancel: bool) -> list[tuple[threading.Thread, dict[str, Any]]]:
        return [
            _in_thread(
                lambda d=device, c=cancel: d.participate(
                    SoftmaxTrainer(), X, Y, task_id=task_id, cancel=c if with_cancel else None
                )
            )
            for device, cancel in zip(devices, cancels, strict=True)
        ]

    for worker, out in participate_all(False):
        worker.join(LONG)
        assert out.get("value") is not None, out
    before = _files(tmp_path / "d0")
    assert any(n.startswith("residual") for n in before), before
    # Execute
    armed.set()
    runs = participate_all(True)
    runs[0][0].join(LONG)
    others_set_at = time.monotonic()
    for cancel in cancels[1:]:
        cancel.set()
    for worker, _ in runs[1:]:
        worker.join(LONG)
    for device in devices:
        device.close()
    # Assert: all stopped, each within 1 s of its cancel (docs/devices.md); device 0 left its
    # residual and record as a crash there would
    assert all(not worker.is_alive() for worker, _ in runs)
    err = runs[0][1]["error"]
    assert isinstance(err, ParticipationCancelled) and err.phase == "secure", err
    assert runs[0][1]["ended"] - set_at[0] < CANCEL_S
    names = sorted(p.name for p in (tmp_path / "d0").iterdir())
    records = [n for n in names if n.startswith("accepted-")]
    if after == "advertise-keys":  # before the masked input: residual as before, byte for byte
        assert records == [] and _files(tmp_path / "d0") == before, names
    else:  # the masked input was taken: its record waits for the round's outcome
        assert any(n.endswith(".json") for n in records), names
        assert _files(tmp_path / "d0") != before  # the residual now what it did not send
    for _, out in runs[1:]:  # the others, cancelled while they waited for device 0
        assert isinstance(out.get("error"), ParticipationCancelled), out
        assert out["ended"] - others_set_at < CANCEL_S


def test_a_cancel_ends_a_connect_that_hangs(tmp_path: Path) -> None:
    # Prepare: a listener whose backlog one connection fills: a further connect hangs (its SYN
    # dropped) until its timeout, 30 s here, as to a server behind a network that went away.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=LONG)
    sending = threading.Event()

    def signal(request: httpx.Request, nxt: Any) -> httpx.Response:
        sending.set()  # the transport connects next
        response: httpx.Response = nxt(request)
        return response

    cancel = threading.Event()
    try:
        with Client(f"http://127.0.0.1:{port}", str(tmp_path / "dev"), timeout=30.0,
                    mods=(Requests(signal),)) as device:  # fmt: skip
            worker, out = _in_thread(
                lambda: device.participate(SoftmaxTrainer(), X, Y, cancel=cancel)
            )
            # Execute
            assert sending.wait(LONG)
            set_at = time.monotonic()
            cancel.set()
            worker.join(LONG)
    finally:
        filler.close()
        listener.close()
    # Assert
    err = out["error"]
    assert isinstance(err, ParticipationCancelled) and err.phase == "check-in", err
    assert out["ended"] - set_at < CANCEL_S


def test_a_cancel_ends_a_tls_handshake_that_hangs(tmp_path: Path) -> None:
    # Prepare: a server that accepts the connection and never answers the ClientHello: the
    # handshake would wait for its timeout, 30 s here.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted, done = threading.Event(), threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            accepted.set()
            done.wait(LONG)

    threading.Thread(target=serve, daemon=True).start()
    cancel = threading.Event()
    try:
        with Client(f"https://127.0.0.1:{port}", str(tmp_path / "dev"), timeout=30.0) as device:
            worker, out = _in_thread(
                lambda: device.participate(SoftmaxTrainer(), X, Y, cancel=cancel)
            )
            # Execute
            assert accepted.wait(LONG)
            set_at = time.monotonic()
            cancel.set()
            worker.join(LONG)
    finally:
        done.set()
        listener.close()
    # Assert
    err = out["error"]
    assert isinstance(err, ParticipationCancelled) and err.phase == "check-in", err
    assert out["ended"] - set_at < CANCEL_S


def test_an_async_participate_cancelled_while_it_trains_stops_at_the_upload(
    served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    # Training runs on the event loop's thread: a cancel asked for meanwhile (here by the
    # trainer itself, standing for any other code) lands at the task's next await, the upload.
    url, http = served
    task_id = create_task(http, task_config(clients_per_round=1, rounds=3))
    app_dir = tmp_path / "dev"

    class CancelsItsTask(SoftmaxTrainer):
        task: asyncio.Task[Any] | None = None

        def train(self, *args: Any, **kwargs: Any) -> TrainResult:
            assert self.task is not None
            self.task.cancel()
            return super().train(*args, **kwargs)

    async def run() -> None:
        trainer = CancelsItsTask()
        async with AsyncClient(url, str(app_dir)) as device:
            await device.register()
            trainer.task = asyncio.create_task(device.participate(trainer, X, Y, task_id=task_id))
            with pytest.raises(asyncio.CancelledError):
                await trainer.task
        assert "pending.json" in _files(app_dir)  # encoded, then cancelled
        async with AsyncClient(url, str(app_dir)) as device:
            receipt = await device.resume_pending()
        assert receipt is not None and receipt.accepted

    asyncio.run(run())
    assert "pending.json" not in _files(app_dir)
