"""A model download never sends a delta chain as large as the snapshot (helper-202's F3): the
choice is made from the stored frames' lengths before any frame is read, `format=delta` is
409 `unknown_version` ("fetch the snapshot") when the chain would not be smaller, and a chain
that is sent is read from SQLite off the event loop. A loopback coordinator; a dense downlink
(top-k 1.0) so that a few versions' frames outweigh the snapshot."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from compression import ModelSpec, encode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import CodecParams, TensorShape, to_json, unpack_chain
from sdk import TrainResult
from sdk.client import Client

from .test_service_support import ADMIN, await_assignment, send_signed, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
D = 4000
ROUNDS = 6


class _Noise:
    """A trainer that adds seeded noise to every parameter: every downlink step is dense."""

    def train(
        self,
        params: npt.NDArray[np.float32],
        x: Any,
        y: Any,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> TrainResult:
        return TrainResult((params + rng.normal(0, 0.01, params.shape)).astype(np.float32), 10, 1.0)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Any, httpx.Client, Client, int]]:
    """(server thread, admin http, a registered device, task id) after ROUNDS committed rounds."""
    tmp = tmp_path_factory.mktemp("h203_delta")
    cfg = ServiceConfig(db_path=str(tmp / "plume.db"), admin_token=ADMIN, poll_s=0.02, tick_s=0.02)
    spec = ModelSpec.from_shapes([("w", (D,))])
    tc = task_config(
        spec=[TensorShape("w", [D])],
        rounds=ROUNDS,
        clients_per_round=1,
        min_reports=1,
        codec=CodecParams(topk=1.0, bits=16),
        downlink=CodecParams(topk=1.0, bits=16),
        max_chain=ROUNDS,
    )
    server = ServerThread(cfg)
    url = server.start()
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            r = http.post("/v1/admin/tasks", json=to_json(tc), headers=AUTH)
            assert r.status_code == 201, r.text
            task = int(r.json()["task_id"])
            w0 = np.random.default_rng(0).normal(0, 0.1, D).astype(np.float32)
            r = http.put(
                f"/v1/admin/tasks/{task}/model",
                content=encode_snapshot(w0, spec, "fp32"),
                headers={**AUTH, "content-type": "application/octet-stream"},
            )
            assert r.status_code == 200, r.text
            device = Client(url, str(tmp / "dev"))
            device.register()
            for _ in range(ROUNDS):
                a = await_assignment(device, task, timeout=60)
                device.train_round(
                    a, _Noise(), np.zeros((10, 1), np.float32), np.zeros(10, np.int64)
                )
            rt = server.app.state.coordinator.runtimes[task]
            give_up = time.monotonic() + 60
            while rt.version < ROUNDS and time.monotonic() < give_up:
                time.sleep(0.02)
            assert rt.version == ROUNDS
            yield server, http, device, task
    finally:
        server.stop()


def _get(http: httpx.Client, device: Client, task: int, params: dict[str, str]) -> httpx.Response:
    return send_signed(http, device, "GET", f"/v1/tasks/{task}/model", 0, params=params)


def _snapshot_len(http: httpx.Client, device: Client, task: int) -> int:
    r = _get(http, device, task, {"format": "snapshot"})
    assert r.status_code == 200, r.text
    return len(r.content)


def test_a_forced_delta_larger_than_the_snapshot_is_409_fetch_the_snapshot(
    world: tuple[Any, httpx.Client, Client, int],
) -> None:
    _, http, device, task = world
    snap = _snapshot_len(http, device, task)
    r = _get(http, device, task, {"format": "delta", "have": "0"})
    assert r.status_code == 409, (r.status_code, len(r.content), snap)
    body = r.json()
    assert body["reason"] == "unknown_version"
    assert "fetch the snapshot" in body["detail"]
    # A short chain, smaller than the snapshot, is still sent as asked
    r = _get(http, device, task, {"format": "delta", "have": str(ROUNDS - 1)})
    assert r.status_code == 200, r.text
    assert r.headers["x-plume-model-encoding"] == "delta-chain"
    assert len(r.content) < snap
    assert len(unpack_chain(r.content, max_frames=ROUNDS, max_frame_bytes=1 << 20)) == 1


def test_auto_decides_without_reading_a_frame_it_would_not_send(
    world: tuple[Any, httpx.Client, Client, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, http, device, task = world
    store = server.app.state.coordinator.store
    reads: list[tuple[int, int]] = []
    real = store.chain

    def chain(task_id: int, after: int, up_to: int | None = None) -> Any:
        reads.append((after, -1 if up_to is None else up_to))
        return real(task_id, after, up_to)

    monkeypatch.setattr(store, "chain", chain)
    snap = _snapshot_len(http, device, task)
    r = _get(http, device, task, {"format": "auto", "have": "0"})
    assert r.status_code == 200, r.text
    assert r.headers["x-plume-model-encoding"] == "snapshot"
    assert len(r.content) == snap
    assert reads == []  # the whole chain was read, then thrown away


def test_a_chain_is_read_off_the_event_loop(
    world: tuple[Any, httpx.Client, Client, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, http, device, task = world
    store = server.app.state.coordinator.store
    on_loop: list[bool] = []
    real = store.chain

    def chain(task_id: int, after: int, up_to: int | None = None) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(task_id, after, up_to)

    monkeypatch.setattr(store, "chain", chain)
    r = _get(http, device, task, {"format": "auto", "have": str(ROUNDS - 1)})
    assert r.status_code == 200, r.text
    assert r.headers["x-plume-model-encoding"] == "delta-chain"
    assert on_loop == [False]
    assert threading.current_thread() is threading.main_thread()
