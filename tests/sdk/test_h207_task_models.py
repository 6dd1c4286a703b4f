"""The app directory holds one model per task (at most `MAX_MODELS`, the least recently written
dropped past that, as for the residuals), so a device that takes part in two tasks downloads a
compressed delta from its own held version of each, not a whole snapshot at every switch (which
also ran into the coordinator's `snapshots_per_version` limit while a task's version did not
move). Before, the app directory held the model of one task: every switch was a snapshot.

Real coordinator on loopback for the client's requests (`have=`, the check-in's
`model_version`, the encodings that came); the store's own rules (bound, crash safety,
corruption of one task's model, an app directory the previous SDK wrote) on the store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import stat
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import ModelSpec
from coordinator.service import ServerThread, ServiceConfig
from protocol.names import Header, ModelEncoding
from sdk import AsyncClient, Client, ClientError
from sdk.device_store import MAX_MODELS, DeviceStore
from tests.coordinator.test_service_support import (
    ADMIN,
    SHAPES,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
)

from .test_review_device_state import _Crash, _crash_on

X, Y = local_data(0)
SPEC = ModelSpec.from_shapes(SHAPES)
MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
_MODEL_PATH = re.compile(r"/v1/tasks/([0-9]+)/model")


class _Seen:
    """A client mod keeping, in order, every model download (task, `have` asked with, encoding
    answered, status) and every check-in body sent."""

    def __init__(self) -> None:
        self.downloads: list[tuple[int, str | None, str | None, int]] = []
        self.check_ins: list[dict[str, Any]] = []

    def note(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        m = _MODEL_PATH.fullmatch(request.url.path)
        if m is not None:
            self.downloads.append(
                (
                    int(m.group(1)),
                    request.url.params.get("have"),
                    response.headers.get(str(Header.MODEL_ENCODING)),
                    response.status_code,
                )
            )
        elif request.url.path == "/v1/checkin":
            self.check_ins.append(json.loads(request.content))
        return response

    def sync_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        return self.note(request, nxt(request))

    async def async_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        return self.note(request, await nxt(request))


def _serve(root: Path, **over: Any) -> Generator[tuple[str, int, int], None, None]:
    cfg = ServiceConfig(db_path=str(root / "p.db"), admin_token=ADMIN, poll_s=0.05, **over)
    with ServerThread(cfg) as url:
        with httpx.Client(base_url=url) as admin:
            one = task_config(clients_per_round=1, rounds=4, selection_timeout_s=0.2, deadline_s=20)
            a, b = create_task(admin, one), create_task(admin, one)
        yield url, a, b


@pytest.fixture
def two_tasks(tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    """A coordinator with two tasks of one-device rounds: (url, task A, task B)."""
    yield from _serve(tmp_path)


def _rounds(url: str, root: Path, order: list[int], seen: _Seen, asynchronous: bool) -> list[Any]:
    """One round of each task of `order`, in that order, by one device (`participate`)."""
    if not asynchronous:
        with Client(url, str(root), mods=(seen.sync_mod,)) as client:
            client.register()
            return [
                client.participate(SoftmaxTrainer(), X, Y, task_id=t, max_wait_s=20) for t in order
            ]

    async def run() -> list[Any]:
        async with AsyncClient(url, str(root), mods=(seen.async_mod,)) as client:
            await client.register()
            return [
                await client.participate(SoftmaxTrainer(), X, Y, task_id=t, max_wait_s=20)
                for t in order
            ]

    return asyncio.run(run())


@MODES
def test_a_device_alternating_two_tasks_downloads_deltas_after_its_first_round_of_each(
    two_tasks: tuple[str, int, int], tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare
    url, a, b = two_tasks
    seen = _Seen()
    # Execute: A twice, then B, A, B: the two tasks' held versions differ when B's turn comes
    reports = _rounds(url, tmp_path / "dev", [a, a, b, a, b], seen, asynchronous)
    # Assert: a snapshot for the first round of each task only; every later download is a
    # delta chain from the version of *that* task the device holds (the previous round's base)
    assert all(r is not None and r.receipt.accepted for r in reports)
    versions = [(r.task_id, r.model_version) for r in reports]
    assert versions == [(a, 0), (a, 1), (b, 0), (a, 2), (b, 1)]
    assert [d[:3] for d in seen.downloads] == [
        (a, None, ModelEncoding.SNAPSHOT),
        (a, "0", ModelEncoding.DELTA_CHAIN),
        (b, None, ModelEncoding.SNAPSHOT),
        (a, "1", ModelEncoding.DELTA_CHAIN),
        (b, "0", ModelEncoding.DELTA_CHAIN),
    ]
    assert [r.download_encoding for r in reports] == [
        ModelEncoding.SNAPSHOT, ModelEncoding.DELTA_CHAIN, ModelEncoding.SNAPSHOT,
        ModelEncoding.DELTA_CHAIN, ModelEncoding.DELTA_CHAIN,
    ]  # fmt: skip
    # the snapshot is the largest download of each task
    assert max(r.bytes_down for r in reports[1:2] + reports[3:]) < min(
        reports[0].bytes_down, reports[2].bytes_down
    )
    # Each check-in names the version held of the task it names: before B's second round,
    # B's version 0, not A's version 2 (the model written last)
    last_b = [c for c in seen.check_ins if c.get("task_id") == b][-1]
    assert last_b["model_version"] == 0
    last_a = [c for c in seen.check_ins if c.get("task_id") == a][-1]
    assert last_a["model_version"] == 1


def test_switching_tasks_outside_rounds_stays_under_the_snapshot_limit(tmp_path: Path) -> None:
    # Prepare: one snapshot of a version per device per hour; versions that do not move (as
    # while a task's rounds keep being abandoned). Before, the third call was a snapshot of
    # A's version 0 again, refused 429 `rate_limited`.
    served = _serve(tmp_path, snapshots_per_version=1)
    url, a, b = next(served)
    seen = _Seen()
    try:
        with Client(url, str(tmp_path / "dev"), mods=(seen.sync_mod,), retries=0) as client:
            client.register()
            # Execute
            got = [client.fetch_current(t, SPEC)[1:] for t in (a, b, a, b, a)]
    finally:
        served.close()
    # Assert: after the first of each, an empty chain from the version held of that task
    assert got == [
        (0, ModelEncoding.SNAPSHOT), (0, ModelEncoding.SNAPSHOT), (0, ModelEncoding.DELTA_CHAIN),
        (0, ModelEncoding.DELTA_CHAIN), (0, ModelEncoding.DELTA_CHAIN),
    ]  # fmt: skip
    assert [d[1] for d in seen.downloads] == [None, None, "0", "0", "0"]
    assert all(d[3] == 200 for d in seen.downloads)


@pytest.mark.parametrize("corrupted", ["A", "B"])
def test_a_corrupted_held_model_of_one_task_leaves_the_other_tasks_model(
    two_tasks: tuple[str, int, int], tmp_path: Path, corrupted: str
) -> None:
    # Prepare: a round of each; then one byte of one task's model file flipped on disk
    url, a, b = two_tasks
    root = tmp_path / "dev"
    _rounds(url, root, [a, b], _Seen(), False)
    bad, good = (a, b) if corrupted == "A" else (b, a)
    path = root / ("model.f32" if bad == a else f"model-{bad}.f32")  # A was written first
    raw = bytearray(path.read_bytes())
    raw[7] ^= 0x40
    path.write_bytes(bytes(raw))
    seen = _Seen()
    # Execute
    reports = _rounds(url, root, [bad, good], seen, False)
    # Assert: the corrupted task's model is no model held (a snapshot, no `have=`); the other
    # task's still is (a delta chain from it)
    assert all(r is not None and r.receipt.accepted for r in reports)
    assert [d[:3] for d in seen.downloads] == [
        (bad, None, ModelEncoding.SNAPSHOT),
        (good, "0", ModelEncoding.DELTA_CHAIN),
    ]


class _CorruptChains:
    """Flips a byte of every delta chain answered for `task` (a digest mismatch)."""

    def __init__(self, task: int) -> None:
        self.task = task

    def __call__(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        response: httpx.Response = nxt(request)
        encoding = response.headers.get(str(Header.MODEL_ENCODING))
        if request.url.path != f"/v1/tasks/{self.task}/model" or encoding != "delta-chain":
            return response
        body = bytearray(response.content)
        body[-5] ^= 0xFF
        return httpx.Response(200, headers=response.headers, content=bytes(body), request=request)


def test_an_integrity_failure_of_one_task_forgets_only_that_tasks_model(
    two_tasks: tuple[str, int, int], tmp_path: Path
) -> None:
    # Prepare: a round of each task
    url, a, b = two_tasks
    root = tmp_path / "dev"
    _rounds(url, root, [a, b], _Seen(), False)
    seen = _Seen()
    # Execute: A's chain fails its digest check (forgotten, asked again as a snapshot), then B
    with Client(url, str(root), mods=(seen.sync_mod, _CorruptChains(a))) as client:
        first = client.participate(SoftmaxTrainer(), X, Y, task_id=a, max_wait_s=20)
        second = client.participate(SoftmaxTrainer(), X, Y, task_id=b, max_wait_s=20)
    # Assert: B's model was not forgotten with A's: its round came as a chain from it
    assert first is not None and first.download_encoding == ModelEncoding.SNAPSHOT
    assert second is not None and second.download_encoding == ModelEncoding.DELTA_CHAIN
    assert [d[:2] for d in seen.downloads] == [(a, "0"), (a, None), (b, "0")]


def test_an_upgraded_app_keeps_its_held_model_as_that_tasks_entry(
    two_tasks: tuple[str, int, int], tmp_path: Path
) -> None:
    # Prepare: a round of task A, then the app directory as the SDK before per-task models
    # wrote it: model.f32 and state.json with the model's version, digest and exactness and
    # its task (the keys `save_model` wrote, and `register`'s), nothing else
    url, a, b = two_tasks
    root = tmp_path / "dev"
    _rounds(url, root, [a], _Seen(), False)
    state = json.loads((root / "state.json").read_text())
    old = {
        k: state[k]
        for k in ("device_id", "model_digest", "model_exact", "model_version", "registered")
    }
    old["task_id"] = a
    (root / "state.json").write_text(json.dumps(old, sort_keys=True))
    assert {p.name for p in root.glob("model*")} == {"model.f32"}
    seen = _Seen()
    # Execute: the upgraded app runs A, B, A
    reports = _rounds(url, root, [a, b, a], seen, False)
    # Assert: A's held model was used (a chain from version 0), and still after B's first round
    assert all(r is not None and r.receipt.accepted for r in reports)
    assert [d[:3] for d in seen.downloads] == [
        (a, "0", ModelEncoding.DELTA_CHAIN),
        (b, None, ModelEncoding.SNAPSHOT),
        (a, "1", ModelEncoding.DELTA_CHAIN),
    ]
    assert {p.name for p in root.glob("model*")} == {"model.f32", f"model-{b}.f32"}


# -- the store ------------------------------------------------------------------------------


def _params(value: float, size: int = SPEC.size) -> np.ndarray:
    return np.full(size, value, np.float32)


def _digest(params: np.ndarray) -> str:
    return hashlib.sha256(params.astype("<f4").tobytes()).hexdigest()


def _save(store: DeviceStore, task: int, value: float, version: int = 1) -> None:
    store.save_model(task, _params(value), version, _digest(_params(value)), True)


def _held(store: DeviceStore, task: int) -> tuple[float, int] | None:
    """(the value every parameter holds, version) of `task`'s held model, or None."""
    got = store.load_model(task, SPEC.size)
    if got is None:
        return None
    assert got[2] is True and np.all(got[0] == got[0][0])
    return float(got[0][0]), got[1]


def _model_files(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.name.startswith("model")}


def test_each_task_keeps_its_own_model_and_version(tmp_path: Path) -> None:
    # Prepare / Execute
    store = DeviceStore(tmp_path)
    _save(store, 5, 1.0, version=3)
    _save(store, 6, 2.0, version=7)
    _save(store, 5, 3.0, version=4)
    # Assert: each task's own model and version, after a restart too
    store.close()
    again = DeviceStore(tmp_path)
    assert _held(again, 5) == (3.0, 4) and _held(again, 6) == (2.0, 7)
    assert _held(again, 7) is None
    assert again.model_version(5) == 4 and again.model_version(6) == 7
    assert again.model_version(None) == 4  # the model written last
    assert again.model_version(7) is None
    assert _model_files(tmp_path) == {"model.f32", "model-6.f32"}
    modes = {stat.S_IMODE((tmp_path / n).stat().st_mode) for n in _model_files(tmp_path)}
    assert modes == {0o600}


def test_past_the_bound_the_least_recently_written_model_is_dropped(tmp_path: Path) -> None:
    # Prepare: MAX_MODELS tasks; task 1 (the oldest, in model.f32) is written again, so task 2
    # is the least recently written
    store = DeviceStore(tmp_path)
    for t in range(1, MAX_MODELS + 1):
        _save(store, t, float(t))
    _save(store, 1, 10.0, version=2)
    # Execute: a task more
    _save(store, 99, 99.0)
    # Assert: task 2 dropped (file and entry), every other held
    assert _held(store, 2) is None and not (tmp_path / "model-2.f32").exists()
    assert _held(store, 1) == (10.0, 2) and _held(store, 99) == (99.0, 1)
    assert all(_held(store, t) == (float(t), 1) for t in range(3, MAX_MODELS + 1))
    assert len(_model_files(tmp_path)) == MAX_MODELS
    assert "2" not in store.state()["models"]


def test_the_model_in_model_f32_is_dropped_like_any_other_and_its_file_reused(
    tmp_path: Path,
) -> None:
    # Prepare: tasks 1 (model.f32) to MAX_MODELS
    store = DeviceStore(tmp_path)
    for t in range(1, MAX_MODELS + 1):
        _save(store, t, float(t))
    # Execute: a ninth task drops task 1; a tenth takes model.f32 and drops task 2
    _save(store, 50, 50.0)
    dropped_first = _model_files(tmp_path)
    _save(store, 51, 51.0)
    # Assert
    assert "model.f32" not in dropped_first
    assert _held(store, 1) is None and _held(store, 2) is None
    assert _held(store, 50) == (50.0, 1) and _held(store, 51) == (51.0, 1)
    assert store.state()["task_id"] == 51 and "model-51.f32" not in _model_files(tmp_path)
    assert len(_model_files(tmp_path)) == MAX_MODELS


def test_an_eviction_cut_by_a_crash_leaves_no_file_past_the_bound_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the bound full; the save of a new task dies after its commit (state.json),
    # before the dropped task's file is removed
    store = DeviceStore(tmp_path)
    for t in range(1, MAX_MODELS + 1):
        _save(store, t, float(t))
    _crash_on(monkeypatch, "model-2.f32", attr="_unlink")
    _save(store, 1, 1.0, version=2)  # task 2 now the least recently written
    with pytest.raises(_Crash):
        _save(store, 99, 99.0)
    monkeypatch.undo()
    store.close()
    # Execute: restart
    again = DeviceStore(tmp_path)
    # Assert: the dropped task's leftover file is gone; the new task's model is held
    assert not (tmp_path / "model-2.f32").exists() and _held(again, 2) is None
    assert _held(again, 99) == (99.0, 1)
    assert len(_model_files(tmp_path)) == MAX_MODELS


def test_a_model_save_of_a_second_task_cut_before_its_state_is_not_held_under_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: task 7 (model.f32) and task 8 (model-8.f32, version 1); the save of task 8's
    # version 2 dies after its file, before state.json
    store = DeviceStore(tmp_path)
    _save(store, 7, 7.0)
    _save(store, 8, 1.0)
    _crash_on(monkeypatch, "state.json")
    with pytest.raises(_Crash):
        _save(store, 8, 2.0, version=2)
    monkeypatch.undo()
    store.close()
    # Execute: restart
    again = DeviceStore(tmp_path)
    # Assert: version 2's parameters are never taken for version 1 (the next download of task 8
    # is a snapshot), and task 7 is untouched
    assert _held(again, 8) is None
    assert _held(again, 7) == (7.0, 1)


def test_a_first_save_cut_before_its_state_leaves_no_file_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DeviceStore(tmp_path)
    _save(store, 7, 7.0)
    _crash_on(monkeypatch, "state.json")
    with pytest.raises(_Crash):
        _save(store, 8, 8.0)
    monkeypatch.undo()
    store.close()

    again = DeviceStore(tmp_path)

    assert _held(again, 8) is None and _held(again, 7) == (7.0, 1)
    assert _model_files(tmp_path) == {"model.f32"}


@pytest.mark.parametrize("bad", [5, 6])
def test_a_corrupted_model_file_of_one_task_leaves_the_others(tmp_path: Path, bad: int) -> None:
    # Prepare: tasks 5 (model.f32) and 6 (model-6.f32); one byte of one flipped
    store = DeviceStore(tmp_path)
    _save(store, 5, 5.0)
    _save(store, 6, 6.0)
    path = tmp_path / ("model.f32" if bad == 5 else "model-6.f32")
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0x01
    path.write_bytes(bytes(raw))
    good = 11 - bad
    # Execute / Assert: the corrupted one is no model held, the other is
    assert _held(store, bad) is None
    assert _held(store, good) == (float(good), 1)
    # forgetting the bad one (as an integrity failure does) keeps the other too
    store.forget_model(bad)
    assert _held(store, good) == (float(good), 1)
    assert store.model_version(bad) is None


def test_forget_model_without_a_task_forgets_every_model(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    _save(store, 5, 5.0)
    _save(store, 6, 6.0)

    store.forget_model()

    assert _held(store, 5) is None and _held(store, 6) is None
    assert _model_files(tmp_path) == set()


# state.json and model.f32 as the SDK before per-task models wrote them (DeviceStore at
# commit 55284819: `update_state(device_id=..., registered=True)`, then `save_model(5, P, 3,
# sha256(P), True)` with P = arange(170) / 64), byte for byte.
_OLD_STATE = (
    '{"device_id": "abababababababababababababababababababababababababababababababab", '
    '"model_digest": "ae69885e11a30857ea756a6d5ebe9ff568cec2807aa60ab7da4017a9d79c4759", '
    '"model_exact": true, "model_version": 3, "registered": true, "task_id": 5}'
)
_OLD_PARAMS = (np.arange(170, dtype=np.float32) / 64).astype(np.float32)


def _old_app_dir(root: Path, params: np.ndarray = _OLD_PARAMS) -> None:
    root.mkdir(mode=0o700)
    (root / "state.json").write_text(_OLD_STATE)
    (root / "model.f32").write_bytes(params.astype("<f4").tobytes())
    for name in ("state.json", "model.f32"):
        (root / name).chmod(0o600)


def test_an_app_dir_of_the_previous_sdk_keeps_its_model_as_its_tasks(tmp_path: Path) -> None:
    # Prepare
    root = tmp_path / "app"
    _old_app_dir(root)
    assert _digest(_OLD_PARAMS) == json.loads(_OLD_STATE)["model_digest"]
    # Execute: opened by this SDK, which then holds a model of another task
    store = DeviceStore(root)
    held = store.load_model(5, 170)
    _save(store, 6, 6.0)
    # Assert: the old model is task 5's entry, and stays beside task 6's
    assert held is not None and held[1:] == (3, True)
    np.testing.assert_array_equal(held[0], _OLD_PARAMS)
    assert store.model_version(5) == 3 and store.model_version(6) == 1
    again = store.load_model(5, 170)
    assert again is not None and again[1] == 3
    np.testing.assert_array_equal(again[0], _OLD_PARAMS)
    assert _model_files(root) == {"model.f32", "model-6.f32"}


def test_a_torn_model_of_the_previous_sdk_is_dropped_safely(tmp_path: Path) -> None:
    # Prepare: the old layout, its model.f32 not the bytes its digest names (a crash between
    # its two writes)
    root = tmp_path / "app"
    _old_app_dir(root, _OLD_PARAMS + 1)
    # Execute
    store = DeviceStore(root)
    held = store.load_model(5, 170)
    # Assert: no model held for task 5 (its next download is a snapshot); its next save holds
    assert held is None
    p = np.zeros(170, np.float32)
    store.save_model(5, p, 4, _digest(p), True)
    got = store.load_model(5, 170)
    assert got is not None and got[1] == 4


def test_the_check_in_names_the_version_held_of_the_task_it_names(tmp_path: Path) -> None:
    # Prepare: two tasks' models held at different versions
    bodies: list[dict[str, Any]] = []

    def coordinator(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 1.0})

    with DeviceStore(tmp_path) as store:
        _save(store, 5, 5.0, version=3)
        _save(store, 6, 6.0, version=9)
    # Execute
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(coordinator)) as c:
        c.check_in(5)
        c.check_in(6)
        c.check_in(7)
        c.check_in()
    # Assert: each task's own version; none for a task without a model; with no task named,
    # the model written last (as before, when the one model held was that)
    assert [b.get("model_version") for b in bodies] == [3, 9, None, 9]


def test_the_snapshot_limit_still_refuses_a_device_holding_no_model(tmp_path: Path) -> None:
    # The control of the test above: with that limit, a second snapshot of one version (the
    # model forgotten) is refused 429, so the test above saw no snapshot asked for again
    served = _serve(tmp_path, snapshots_per_version=1)
    url, a, _ = next(served)
    try:
        with Client(url, str(tmp_path / "dev"), retries=0) as client:
            client.register()
            client.fetch_current(a, SPEC)
            client._core.store.forget_model(a)
            with pytest.raises(ClientError) as caught:
                client.fetch_current(a, SPEC)
    finally:
        served.close()
    assert caught.value.status == 429
