"""Cancelling an `AsyncClient` task at every await point of `participate` leaves the app
directory as a crash there would: nothing spent twice or lost, no pending upload lost, no
accepted record dropped; a fresh client on the same `app_dir` then ends where a run that was
never cancelled ends (the same app-directory files byte for byte, the same global model, one
update per round on the coordinator), and `aclose()` released the directory's lock.

The await points are reached through a client mod (`Cancels`) that counts two steps per
request attempt, before it is sent and after its answer has been read, and cancels the task at
the k-th: "before" stands for every await up to the coordinator taking the request (connect,
send), "after" for every await after it took it (the answer lost). Between two requests the
client awaits only `asyncio.sleep` (between check-ins, before a retry), which is the same
state as the "after" of the request before it; training and the app-directory writes do not
await (they run on the event loop's thread), so no cancel lands inside them. Each run is
against its own loopback coordinator and a device with the same key, so that round ids,
models and residuals are the same in every run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from protocol.names import CheckInAction, Header
from sdk import AsyncClient, TaskEndedError
from sdk.device_store import DeviceStore
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    admin_get,
    create_task,
    local_data,
    task_config,
)

X, Y = local_data(3)
ROUNDS = 2
# How long a test waits before it fails (never reached when it passes): far above the secure
# round of three devices it waits for (0.7 s at most on a loaded 2-core machine).
LONG = 30.0


class Cancels:
    """An async client mod: step 2i+1 before the i-th request attempt is sent, 2i+2 after its
    answer was read; at step `at` it cancels the task it runs in (0: never), there (`here`:
    the mod awaits) or at the client's next await (an httpx read or write, a retry's sleep).
    `steps` records (step, "before|after METHOD path"); `keys` each upload's (round path,
    idempotency key). `flaky`: the first attempt of each upload is taken by the coordinator
    but its answer lost (a 503 stands in), so the client retries after a sleep."""

    def __init__(self, at: int = 0, here: bool = True, flaky: bool = False) -> None:
        self.at, self.here, self.flaky, self.n = at, here, flaky, 0
        self.cancelled = False
        self.steps: list[tuple[int, str]] = []
        self.keys: list[tuple[str, str]] = []

    async def _step(self, where: str) -> None:
        self.n += 1
        self.steps.append((self.n, where))
        if self.n == self.at:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            self.cancelled = True
            if self.here:
                await asyncio.sleep(0)  # raises CancelledError here
                raise AssertionError("not cancelled")

    async def __call__(self, request: httpx.Request, nxt: Any) -> httpx.Response:
        what = f"{request.method} {request.url.path}"
        upload = what.endswith("/updates")
        if upload:
            self.keys.append((request.url.path, request.headers[Header.IDEMPOTENCY_KEY]))
        await self._step("before " + what)
        response: httpx.Response = await nxt(request)
        if (
            upload
            and self.flaky
            and [k for k in self.keys if k[0] == request.url.path] == [self.keys[-1]]
        ):
            response = httpx.Response(503, request=request)
        await self._step("after " + what)
        return response


def _files(app_dir: Path) -> dict[str, bytes]:
    """Every file of an app directory but its key (the same in every run), byte for byte;
    state.json with its `incarnation` (each run's coordinator database has its own) written
    as one placeholder, once checked to be a well-formed one."""
    files = {
        p.name: p.read_bytes()
        for p in sorted(app_dir.iterdir())
        if p.name not in ("device_key",) and p.is_file()
    }
    if "state.json" in files:
        state, n = re.subn(
            rb'"incarnation": "[0-9a-f]{32}"', b'"incarnation": "*"', files["state.json"]
        )
        assert n <= 1, files["state.json"]
        files["state.json"] = state
    return files


def _end_state(http: httpx.Client, task_id: int) -> tuple[list[tuple[Any, ...]], bytes]:
    """Where a run ended on the coordinator: each round's (id, state, reports, version after)
    and the task's current model."""
    rounds = [
        (r["round_id"], r["state"], r["reports"], r["version_after"])
        for r in admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")
    ]
    got = http.get(f"/v1/admin/tasks/{task_id}/model", headers={"authorization": f"Bearer {ADMIN}"})
    assert got.status_code == 200, got.text
    return rounds, got.content


async def _script(url: str, app_dir: Path, task_id: int, mods: tuple[Any, ...] = ()) -> None:
    """What the app does: participate until the task ends (each round a device's), then
    nothing more. Idempotent from any point a crash leaves: it is also how a run resumes."""
    async with AsyncClient(url, str(app_dir), mods=mods, backoff_s=0.0) as device:
        await device.register()
        while True:
            try:
                await device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, max_wait_s=5)
            except TaskEndedError:
                return


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device key made once: every run's device is this device."""
    root = tmp_path_factory.mktemp("key")
    with DeviceStore(str(root / "dev")) as store:
        store.private_key()
    return root / "dev" / "device_key"


class Run:
    """One run of the script, cancelled at `at` (0: never) and then resumed by a fresh client."""

    def __init__(
        self,
        root: Path,
        key: Path,
        at: int,
        *,
        here: bool,
        flaky: bool,
        first: Cancels | None = None,
    ) -> None:
        self.first = Cancels(at, here, flaky) if first is None else first
        self.resumed = Cancels()
        self.left: dict[str, bytes] = {}  # the app directory as the cancel left it
        cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.02)
        app_dir = root / "dev"
        app_dir.mkdir(parents=True)
        shutil.copy(key, app_dir / "device_key")
        with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
            task_id = create_task(http, task_config(clients_per_round=1, rounds=ROUNDS))

            async def run() -> None:
                try:
                    await _script(url, app_dir, task_id, (self.first,))
                except asyncio.CancelledError:
                    assert self.first.cancelled
                    self.left = _files(app_dir)
                    # aclose released the lock: a store opened here (another process's would
                    # be refused the same way) is not refused
                    DeviceStore(str(app_dir)).close()
                    await _script(url, app_dir, task_id, (self.resumed,))
                else:
                    if self.first.cancelled:
                        # Only a cancel asked for at the run's very last step with `here`
                        # off: the client awaits nothing after the last check-in's answer
                        # (TaskEndedError, then an aclose that does not suspend), so the
                        # script ends before it. The cancel is not lost, though: the task
                        # still carries it and takes it at its next await (explore mode with
                        # more examples drew at=20, here=False, flaky=True: 20 steps).
                        assert not self.first.here and self.first.n == self.first.at
                        task = asyncio.current_task()
                        assert task is not None and task.cancelling() == 1
                        with contextlib.suppress(asyncio.CancelledError):
                            await asyncio.sleep(0)
                            raise AssertionError("the pending cancel was lost")
                        task.uncancel()
                    # else `at` past the run's last step

            asyncio.run(run())
            self.files = _files(app_dir)
            self.rounds, self.model = _end_state(http, task_id)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, key_dir: Path) -> Run:
    """The script never cancelled: three rounds, each with this device's update."""
    ref = Run(tmp_path_factory.mktemp("ref"), key_dir, 0, here=True, flaky=False)
    assert ref.rounds == [(r, "committed", 1, r) for r in range(1, ROUNDS + 1)]
    assert sorted(ref.files) == ["model.f32", "residual-1.bin", "state.json"], ref.files
    return ref


def _check(run: Run, reference: Run) -> None:
    # The same end: app directory byte for byte (residual, model, state; no pending upload,
    # no accepted record), the coordinator's rounds (one update each) and global model.
    assert run.files == reference.files
    assert run.rounds == reference.rounds
    assert run.model == reference.model
    # Each round's update encoded once: every upload of a round, before and after the
    # cancel, carries one idempotency key (a second encoding would spend the residual again).
    keys: dict[str, set[str]] = {}
    for path, key in run.first.keys + run.resumed.keys:
        keys.setdefault(path, set()).add(key)
    assert all(len(k) == 1 for k in keys.values()), keys
    # An upload in flight when cancelled stays pending, and is what the next client sends
    # first (its re-sent key is the cancelled one's).
    if "pending.json" in run.left:
        assert run.resumed.keys and run.resumed.keys[0] == run.first.keys[-1]
    if run.first.cancelled:
        where = run.first.steps[-1][1]
        if where.startswith("after POST") and where.endswith("/updates"):
            assert "pending.json" in run.left, where  # answer lost: the fate unknown


@settings(max_examples=8, derandomize=True, deadline=None, database=None)
@given(
    at=st.integers(1, 30),
    here=st.booleans(),
    flaky=st.booleans(),
)
def test_a_task_cancelled_anywhere_resumes_to_the_uncancelled_end(
    tmp_path_factory: pytest.TempPathFactory,
    key_dir: Path,
    reference: Run,
    at: int,
    here: bool,
    flaky: bool,
) -> None:
    _check(Run(tmp_path_factory.mktemp("run"), key_dir, at, here=here, flaky=flaky), reference)


class CancelsAtEnd(Cancels):
    """`Cancels` whose step is the one after the answer that ends the task (a check-in
    answered "end"): the run's last step, however many check-ins were answered "wait" before
    it (one more each time a round's close is still running when the device checks in, as
    on a loaded machine), so two runs need not take the same number of steps."""

    def __init__(self, flaky: bool) -> None:
        super().__init__(0, here=False, flaky=flaky)

    async def __call__(self, request: httpx.Request, nxt: Any) -> httpx.Response:
        async def answered(r: httpx.Request) -> httpx.Response:
            response: httpx.Response = await nxt(r)
            if r.url.path.endswith("/checkin") and response.status_code == 200:
                if json.loads(await response.aread())["action"] == CheckInAction.END:
                    self.at = self.n + 1  # the "after" step that comes next
            return response

        return await super().__call__(request, answered)


def test_a_cancel_asked_at_the_last_step_stays_with_the_task(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, reference: Run
) -> None:
    # Execute: a flaky run cancelled at the client's next await after its last step (the
    # answer of the check-in that ends the task), which never comes. Before, the step was
    # counted in a first run; a loaded machine's second run can wait once more between
    # rounds, so the cancel landed a step early or never (s67: every close delayed 0.5 s).
    run = Run(
        tmp_path_factory.mktemp("last"),
        key_dir,
        0,
        here=False,
        flaky=True,
        first=CancelsAtEnd(flaky=True),
    )
    # Assert: Run checked that the cancel stayed pending on the task; the run ended as the
    # uncancelled one does
    assert run.first.cancelled and run.first.n == run.first.at
    assert run.first.steps[-1][1].startswith("after POST") and run.first.steps[-1][1].endswith(
        "/checkin"
    )
    _check(run, reference)


class CancelsAsItAnswers(httpx.AsyncBaseTransport):
    """A transport that reads the coordinator's whole answer, then cancels `task` and hands the
    answer back without awaiting again: the task's cancel and the response arrive together."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.task: asyncio.Task[Any] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        await response.aclose()
        if self.task is not None and "/checkin" in request.url.path:
            self.task.cancel()
        return httpx.Response(response.status_code, headers=response.headers, content=body)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_cancel_that_comes_with_the_answer_is_not_lost(tmp_path: Path) -> None:
    # Before: the answer's read ran under `asyncio.wait_for`, which on Python 3.11 returns the
    # result of an inner read that has finished when the cancel lands, and drops the cancel: the
    # task went on (here to its download, training and upload) as if never cancelled.
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.02)
    app_dir = tmp_path / "dev"
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(clients_per_round=1, rounds=ROUNDS))
        transport = CancelsAsItAnswers()

        async def run() -> None:
            async with AsyncClient(url, str(app_dir), transport=transport) as device:
                await device.register()
                transport.task = asyncio.create_task(
                    device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, max_wait_s=5)
                )
                with pytest.raises(asyncio.CancelledError):
                    await transport.task

        asyncio.run(run())
        rounds = admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")
    # Assert: stopped at its check-in's answer: nothing downloaded, trained or sent
    assert sorted(_files(app_dir)) == ["state.json"]
    assert [r["reports"] for r in rounds] == [0]


class CancelsAt:
    """An async client mod that cancels its task at the first step labelled `label` ("before
    POST .../stages/masked-input") once `armed` is set, there (the mod awaits) or at the
    client's next await."""

    def __init__(self, label: str, here: bool) -> None:
        self.label, self.here = label, here
        self.armed = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def _step(self, where: str) -> None:
        if self.armed.is_set() and not self.cancelled.is_set() and where.endswith(self.label):
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            self.cancelled.set()
            if self.here:
                await asyncio.sleep(0)
                raise AssertionError("not cancelled")

    async def __call__(self, request: httpx.Request, nxt: Any) -> httpx.Response:
        what = f"{request.method} {request.url.path}"
        await self._step("before " + what)
        response: httpx.Response = await nxt(request)
        await self._step("after " + what)
        return response


def _secure_task(http: httpx.Client) -> int:
    """Three devices a round, SecAgg+ (as in tests/sdk/test_h97_cancel.py), its stage timeout
    long (longer than LONG): a test that waited for it fails."""
    secure = {"coord_fraction": 0.5, "stage_timeout_s": 60.0}
    cfg = task_config(clients_per_round=3, min_reports=3, rounds=2, secure=secure)
    return create_task(http, replace(cfg, selection_timeout_s=60.0))


@pytest.mark.parametrize(
    ("label", "here", "taken"),
    [
        ("before POST /v1/secure/rounds/2/stages/advertise-keys", True, False),
        ("after POST /v1/secure/rounds/2/stages/share-keys", False, False),
        ("before POST /v1/secure/rounds/2/stages/masked-input", False, True),
        ("after POST /v1/secure/rounds/2/stages/masked-input", True, True),
    ],
)
def test_a_secure_round_task_cancelled_drops_out_as_a_crash_would(
    tmp_path: Path, label: str, here: bool, taken: bool
) -> None:
    # Prepare: a first round of three devices leaves device 0 a residual; in the second,
    # device 0's task is cancelled at `label`, then the two others' (they wait for it).
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.02)
    mod = CancelsAt(label, here)
    left: dict[str, bytes] = {}
    before: dict[str, bytes] = {}
    d0 = tmp_path / "d0"
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = _secure_task(http)

        async def run() -> None:
            nonlocal before, left
            async with contextlib.AsyncExitStack() as stack:
                devices = [
                    await stack.enter_async_context(
                        AsyncClient(url, str(tmp_path / f"d{i}"), mods=(mod,) if i == 0 else ())
                    )
                    for i in range(3)
                ]
                for device in devices:
                    await device.register()

                def go(device: AsyncClient) -> asyncio.Task[Any]:
                    return asyncio.create_task(
                        device.participate(SoftmaxTrainer(), X, Y, task_id=task_id, max_wait_s=LONG)
                    )

                first = await asyncio.wait_for(asyncio.gather(*map(go, devices)), LONG)
                assert all(r is not None and r.completed for r in first), first
                before = _files(d0)
                mod.armed.set()
                tasks = [go(d) for d in devices]
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(tasks[0], LONG)
                for t in tasks[1:]:
                    t.cancel()
                await asyncio.gather(*tasks[1:], return_exceptions=True)
                left = _files(d0)
            DeviceStore(str(d0)).close()  # aclose released the lock

        asyncio.run(run())
    # Assert: as a crash there would leave it
    assert mod.cancelled.is_set()
    residuals = {n: b for n, b in left.items() if n.startswith("residual")}
    assert "pending.json" not in left
    if not taken:  # before the masked input: residual as before, no record
        assert not any(n.startswith("accepted-") for n in left), sorted(left)
        assert residuals == {n: b for n, b in before.items() if n.startswith("residual")}
    else:  # the masked input's request started: its record waits for the round's outcome
        assert "accepted-2.json" in left, sorted(left)
        assert residuals != {n: b for n, b in before.items() if n.startswith("residual")}
