"""`AsyncClient.participate(..., cancel=threading.Event)`, as `Client.participate`'s: the event,
set from any thread (an OS callback) or by the trainer's own thread, ends the call with
`ParticipationCancelled` and the phase it stopped in, leaving the app directory as a crash
there would; a fresh `AsyncClient` on the same `app_dir` then ends where a run that was never
cancelled ends (the same app-directory files byte for byte, the same rounds and global model).

Before, an async app could only cancel its task, which does not stop the training (it runs on
the event loop's thread). Each run is against its own loopback coordinator and a device with
the same key (as tests/sdk/test_h114_async_cancel.py), so that round ids, models and residuals
are the same in every run. Interleavings are forced by mods and trainers, not by sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol.names import Header
from sdk import AsyncClient, ClientError, TrainResult
from sdk._types import CancelFlag, TrainingCancelled
from sdk.client import CANCELLED, ParticipationCancelled, SecureRoundReport
from sdk.device_store import DeviceStore
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    task_config,
)

from .test_h114_async_cancel import X, Y, _end_state, _files, _script, _secure_task

ROUNDS = 2
# How long a test waits before it fails (never reached when it passes): far above the secure
# round of three devices it waits for (0.5 s at most on a loaded 2-core machine).
LONG = 30.0
CANCEL_S = 5.0  # how soon after its event a call ended (not the 30 s wait it cut short)


class Requests:
    """An async client mod that records each request's "METHOD path" and each upload's
    idempotency key, and hands a request `hook` takes (`hook(request, nxt)`, else None) to it."""

    def __init__(
        self, hook: Callable[[httpx.Request, Any], Awaitable[Any] | None] | None = None
    ) -> None:
        self.seen: list[str] = []
        self.keys: list[str] = []
        self.hook = hook

    async def __call__(self, request: httpx.Request, nxt: Any) -> httpx.Response:
        self.seen.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/updates"):
            self.keys.append(request.headers[Header.IDEMPOTENCY_KEY])
        held = self.hook(request, nxt) if self.hook is not None else None
        response: httpx.Response = await (held if held is not None else nxt(request))
        return response


# The first call of a run: (url, app_dir, task_id, cancel event) -> what it raised.
First = Callable[[str, Path, int, threading.Event], Awaitable[ParticipationCancelled]]


class Run:
    """`first` (a participate cancelled through its event) on a fresh device, then the script
    resumed by a fresh client; `first` None: the script alone (the reference)."""

    def __init__(self, root: Path, key: Path, first: First | None) -> None:
        self.caught: ParticipationCancelled | None = None
        self.left: dict[str, bytes] = {}  # the app directory as the cancel left it
        cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.02)
        app_dir = root / "dev"
        app_dir.mkdir(parents=True)
        shutil.copy(key, app_dir / "device_key")
        with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
            task_id = create_task(http, task_config(clients_per_round=1, rounds=ROUNDS))

            async def run() -> None:
                if first is not None:
                    self.caught = await first(url, app_dir, task_id, threading.Event())
                    self.left = _files(app_dir)
                    DeviceStore(str(app_dir)).close()  # aclose released the lock
                await _script(url, app_dir, task_id)

            asyncio.run(run())
            self.files = _files(app_dir)
            self.rounds, self.model = _end_state(http, task_id)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device key made once: every run's device is this device."""
    root = tmp_path_factory.mktemp("key")
    with DeviceStore(str(root / "dev")) as store:
        store.private_key()
    return root / "dev" / "device_key"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, key: Path) -> Run:
    ref = Run(tmp_path_factory.mktemp("ref"), key, None)
    assert ref.rounds == [(r, "committed", 1, r) for r in range(1, ROUNDS + 1)]
    return ref


def _cancelled(run: Run, phase: str, round_id: int | None) -> ParticipationCancelled:
    caught = run.caught
    assert isinstance(caught, ParticipationCancelled) and isinstance(caught, ClientError)
    assert (caught.status, caught.reason, caught.phase, caught.round_id) == (
        0, CANCELLED, phase, round_id,
    )  # fmt: skip
    return caught


def _same_end(run: Run, reference: Run) -> None:
    assert run.files == reference.files
    assert run.rounds == reference.rounds
    assert run.model == reference.model


def test_a_cancel_set_before_the_call_sends_nothing(
    tmp_path: Path, key: Path, reference: Run
) -> None:
    count = Requests()

    async def first(url: str, app_dir: Path, task_id: int, cancel: threading.Event) -> Any:
        async with AsyncClient(url, str(app_dir), mods=(count,)) as device:
            await device.register()
            cancel.set()
            with pytest.raises(ParticipationCancelled) as caught:
                await device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, cancel=cancel)
        return caught.value

    run = Run(tmp_path, key, first)
    _cancelled(run, "check-in", None)
    assert count.seen == ["POST /v1/devices"]
    assert sorted(run.left) == ["state.json"]
    _same_end(run, reference)


def test_a_cancel_ends_the_wait_between_check_ins_at_once(
    tmp_path: Path, key: Path, reference: Run
) -> None:
    # The first check-in is answered "wait 30 s" (by the mod: the coordinator never sees it,
    # as a check-in lost on the way), and another thread sets the event 0.1 s after.
    cancel_set: list[float] = []
    events: list[threading.Event] = []

    def set_it() -> None:
        cancel_set.append(time.monotonic())
        events[0].set()

    def wait_answer(request: httpx.Request, nxt: Any) -> Awaitable[Any] | None:
        if request.url.path != "/v1/checkin":
            return None

        async def answer() -> httpx.Response:
            threading.Timer(0.1, set_it).start()
            return httpx.Response(200, json={"action": "wait", "retry_after_s": 30.0})

        return answer()

    count = Requests(wait_answer)

    async def first(url: str, app_dir: Path, task_id: int, cancel: threading.Event) -> Any:
        events.append(cancel)
        async with AsyncClient(url, str(app_dir), mods=(count,)) as device:
            await device.register()
            with pytest.raises(ParticipationCancelled) as caught:
                await device.participate(
                    SoftmaxTrainer(), X, Y, task_id=task_id, max_wait_s=60, cancel=cancel
                )
            ended = time.monotonic()
        assert ended - cancel_set[0] < CANCEL_S  # not the 30 s the answer asked for
        return caught.value

    run = Run(tmp_path, key, first)
    _cancelled(run, "wait", None)
    assert count.seen == ["POST /v1/devices", "POST /v1/checkin"]
    assert sorted(run.left) == ["state.json"]
    _same_end(run, reference)


class SetsTheEventAfterOneStep:
    """A trainer taking `cancel` that sets `event` after its first minibatch step and looks at
    `cancel` before each (as `TorchTrainer` does): `TrainingCancelled(1)` if it is what the
    client passed. Records what it was passed."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.passed: list[CancelFlag | None] = []

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
        cancel: CancelFlag | None = None,
    ) -> TrainResult:
        self.passed.append(cancel)
        steps = 0
        for _ in range(epochs):
            for _start in range(0, len(x), batch_size):
                if cancel is not None and cancel.is_set():
                    raise TrainingCancelled(steps)
                steps += 1  # the step's arithmetic does not matter: no result is kept
                self.event.set()
        return SoftmaxTrainer().train(
            params, x, y, epochs=epochs, batch_size=batch_size, lr=lr, rng=rng
        )


def test_a_trainer_passed_the_event_stops_after_the_step_that_set_it(
    tmp_path: Path, key: Path, reference: Run
) -> None:
    trainers: list[SetsTheEventAfterOneStep] = []
    count = Requests()

    async def first(url: str, app_dir: Path, task_id: int, cancel: threading.Event) -> Any:
        trainers.append(SetsTheEventAfterOneStep(cancel))
        async with AsyncClient(url, str(app_dir), mods=(count,)) as device:
            await device.register()
            with pytest.raises(ParticipationCancelled) as caught:
                await device.participate(trainers[0], X, Y, task_id=task_id, cancel=cancel)
        return caught.value

    run = Run(tmp_path, key, first)
    caught = _cancelled(run, "training", 1)
    assert trainers[0].passed == [trainers[0].event]
    assert isinstance(caught.__cause__, TrainingCancelled) and caught.__cause__.steps == 1
    assert not any(s.endswith("/updates") for s in count.seen)  # nothing sent
    # The model downloaded, nothing trained or encoded: no residual, no pending upload.
    assert sorted(run.left) == ["model.f32", "state.json"]
    _same_end(run, reference)


@pytest.mark.parametrize("taken", [False, True])
def test_a_cancel_lets_an_upload_in_flight_go_and_the_next_client_resends_it(
    tmp_path: Path, key: Path, reference: Run, taken: bool
) -> None:
    # The mod holds the upload (its answer never comes): before the coordinator sees it, or
    # after the coordinator took it (the answer lost); another thread sets the event.
    held: list[str] = []

    def hold(request: httpx.Request, nxt: Any) -> Awaitable[Any] | None:
        if not request.url.path.endswith("/updates") or held:
            return None

        async def never_answered() -> httpx.Response:
            if taken:
                await nxt(request)
            threading.Timer(0.05, cancel_it[0].set).start()
            try:
                await asyncio.sleep(LONG * 10)
            except asyncio.CancelledError:
                held.append("let go")
                raise
            raise AssertionError("not let go")

        return never_answered()

    count = Requests(hold)
    cancel_it: list[threading.Event] = []

    async def first(url: str, app_dir: Path, task_id: int, cancel: threading.Event) -> Any:
        cancel_it.append(cancel)
        async with AsyncClient(url, str(app_dir), mods=(count,)) as device:
            await device.register()
            with pytest.raises(ParticipationCancelled) as caught:
                await asyncio.wait_for(
                    device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, cancel=cancel),
                    LONG,
                )
            assert held == ["let go"]  # before the call returned
        return caught.value

    run = Run(tmp_path, key, first)
    _cancelled(run, "upload", 1)
    assert "pending.json" in run.left  # its fate unknown: the next participate re-sends it
    _same_end(run, reference)


def test_a_task_cancel_still_ends_a_call_given_an_event(tmp_path: Path, key: Path) -> None:
    # The request runs in a task of its own while an event is given: the caller's cancel
    # must reach it too (the mod's await is cancelled), and the call ends with CancelledError.
    seen: list[str] = []
    started = asyncio.Event()

    def hold(request: httpx.Request, nxt: Any) -> Awaitable[Any] | None:
        if request.url.path != "/v1/checkin":
            return None

        async def never_answered() -> httpx.Response:
            started.set()
            try:
                await asyncio.sleep(LONG * 10)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            raise AssertionError("not cancelled")

        return never_answered()

    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.02)
    app_dir = tmp_path / "dev"
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(clients_per_round=1, rounds=ROUNDS))

        async def run() -> None:
            async with AsyncClient(url, str(app_dir), mods=(Requests(hold),)) as device:
                await device.register()
                task = asyncio.create_task(
                    device.participate(
                        SoftmaxTrainer(), X, Y, task_id=task_id, cancel=threading.Event()
                    )
                )
                await asyncio.wait_for(started.wait(), LONG)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, LONG)
                # Cancelled, and ended, before the call returned (not left for the loop's close)
                assert seen == ["cancelled"]

        asyncio.run(run())


@pytest.mark.parametrize("after", ["advertise-keys", "masked-input"])
def test_a_cancel_during_a_secure_round_drops_the_device_out_as_a_crash_would(
    tmp_path: Path, after: str
) -> None:
    # Prepare: a first round of all three devices leaves device 0 a residual. In the second,
    # device 0's event is set once its `after` stage upload is answered; the two others' once
    # it has stopped (they wait for it), so nothing waits for a stage timeout.
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.02)
    cancels = [threading.Event() for _ in range(3)]
    armed = threading.Event()

    def cancel_after(request: httpx.Request, nxt: Any) -> Awaitable[Any] | None:
        if not (armed.is_set() and request.url.path.endswith(f"/stages/{after}")):
            return None

        async def answered_then_set() -> httpx.Response:
            response: httpx.Response = await nxt(request)
            cancels[0].set()
            return response

        return answered_then_set()

    before: dict[str, bytes] = {}
    outcomes: list[Any] = []
    d0 = tmp_path / "d0"
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = _secure_task(http)

        async def run() -> None:
            nonlocal before, outcomes
            mod = Requests(cancel_after)
            async with contextlib.AsyncExitStack() as stack:
                devices = [
                    await stack.enter_async_context(
                        AsyncClient(url, str(tmp_path / f"d{i}"), mods=(mod,) if i == 0 else ())
                    )
                    for i in range(3)
                ]
                for device in devices:
                    await device.register()

                def go(device: AsyncClient, cancel: threading.Event | None) -> Any:
                    return asyncio.create_task(
                        device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, cancel=cancel)
                    )

                first = await asyncio.wait_for(
                    asyncio.gather(*(go(d, None) for d in devices)), LONG
                )
                assert all(r is not None and r.completed for r in first), first
                before = _files(d0)
                armed.set()
                tasks = [go(d, c) for d, c in zip(devices, cancels, strict=True)]
                await asyncio.wait({tasks[0]}, timeout=LONG)
                for cancel in cancels[1:]:
                    cancel.set()
                outcomes = await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), LONG
                )

        asyncio.run(run())
    # Assert: every device stopped with ParticipationCancelled("secure"); device 0 left its
    # residual and record as a crash there would
    assert isinstance(outcomes[0], ParticipationCancelled) and outcomes[0].phase == "secure"
    # The others: cancelled while they waited for device 0 or before they trained (a device
    # trains after the setup, and device 0 may reach its stages first), or at the round's end
    # for them, reached before their event was set (the two of them may finish the round
    # without device 0 once its masked input is in)
    for o in outcomes[1:]:
        if isinstance(o, ParticipationCancelled):
            assert o.phase in ("secure", "training"), o
        else:
            assert isinstance(o, SecureRoundReport), o
    left = _files(d0)
    records = [n for n in left if n.startswith("accepted-")]
    residuals = {n: b for n, b in left.items() if n.startswith("residual")}
    assert "pending.json" not in left
    if after == "advertise-keys":  # before the masked input: residual as before, no record
        assert records == [] and residuals == {
            n: b for n, b in before.items() if n.startswith("residual")
        }
    else:  # the masked input was taken: its record waits for the round's outcome
        assert records, sorted(left)
        assert residuals != {n: b for n, b in before.items() if n.startswith("residual")}
