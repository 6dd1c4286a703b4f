"""The SDK declares its trainer's model layout in the check-in (`model_layouts`), so a device
whose model is fixed (an `OrtTrainer`'s artifacts) is only given tasks it can train; a task it
cannot train is `sdk.LayoutMismatchError` (a `ClientError` and a `ValueError`, with `task_id`).

The reviewer's scenario (s25/onnx, finding 1): two tasks of two models running, and one ONNX
Runtime device of each model calling `participate()` without a task. Before, the device of the
second task's model was handed the first task at every check-in, refused it after being
selected (a plain `ValueError`), and both tasks' rounds were abandoned at their deadlines.
Against a real loopback coordinator, with artifacts exported in the test (two tiny models).
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import torch

from compression import encode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import TensorShape, to_json
from sdk import AsyncClient, Client, ClientError, LayoutMismatchError
from sdk import client as sdk_client
from sdk.client import MODEL_LAYOUT_MISMATCH
from sdk.onnx_export import export_training_artifacts
from sdk.ort import OrtTrainer
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    admin_get,
    task_config,
    wait_until,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}
MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "lin": torch.nn.Sequential(torch.nn.Linear(16, 10)),
        "mlp": torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10)),
    }


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("h261_art")
    out = {}
    for name, model in _models().items():
        export_training_artifacts(model, torch.rand(2, 16), root / name, model_name=name)
        out[name] = root / name
    return out


def _data(seed: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(20, 16)).astype(np.float32), rng.integers(0, 10, 20).astype(np.int64)


def _create(http: httpx.Client, trainer: OrtTrainer, name: str, **over: Any) -> int:
    """A running task of the trainer's model (its spec, its export's name), initial model set."""
    spec = trainer.spec
    settings: dict[str, Any] = {
        "rounds": 2, "clients_per_round": 1, "deadline_s": 600.0, "selection_timeout_s": 600.0,
        **over,
    }  # fmt: skip
    cfg = task_config(
        model_name=name,
        spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
        **settings,
    )
    r = http.post("/v1/admin/tasks", json=to_json(cfg), headers=AUTH)
    assert r.status_code == 201, r.text
    task = int(r.json()["task_id"])
    params = np.random.default_rng(task).normal(0, 0.1, spec.size).astype(np.float32)
    r = http.put(
        f"/v1/admin/tasks/{task}/model",
        content=encode_snapshot(params, spec, "fp32"),
        headers={**AUTH, "content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    return task


class _Requests:
    """A client mod keeping every request's path and each check-in's body."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.check_ins: list[bytes] = []

    def _note(self, request: httpx.Request) -> None:
        self.paths.append(request.url.path)
        if request.url.path == "/v1/checkin":
            self.check_ins.append(request.content)

    def sync_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        self._note(request)
        return nxt(request)  # type: ignore[no-any-return]

    async def async_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        self._note(request)
        return await nxt(request)  # type: ignore[no-any-return]

    @property
    def models(self) -> list[str]:
        return [p for p in self.paths if p.endswith("/model")]


@dataclass
class World:
    url: str
    http: httpx.Client
    root: Path
    trainers: dict[str, OrtTrainer]


@pytest.fixture
def world(tmp_path: Path, artifacts: dict[str, Path]) -> Iterator[World]:
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    trainers = {name: OrtTrainer.from_dir(path) for name, path in artifacts.items()}
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        yield World(url, http, tmp_path, trainers)


def _participate(
    w: World, device: str, model: str, seen: _Requests, asynchronous: bool, **kwargs: Any
) -> Any:
    """`participate(trainer of model, **kwargs)` of the device's client (registered)."""
    x, y = _data(len(device))
    trainer = w.trainers[model]
    root = str(w.root / device)
    if not asynchronous:
        with Client(w.url, root, mods=(seen.sync_mod,)) as c:
            c.register()
            return c.participate(trainer, x, y, **kwargs)

    async def run() -> Any:
        async with AsyncClient(w.url, root, mods=(seen.async_mod,)) as c:
            await c.register()
            return await c.participate(trainer, x, y, **kwargs)

    return asyncio.run(run())


@MODES
def test_two_tasks_each_ort_device_only_trains_its_own_task_and_all_rounds_commit(
    world: World, asynchronous: bool
) -> None:
    # Prepare: two tasks of two models, one-device rounds, two rounds each
    tasks = {name: _create(world.http, world.trainers[name], name) for name in ("lin", "mlp")}
    seen = {"lin": _Requests(), "mlp": _Requests()}
    trained: dict[str, list[int]] = {"lin": [], "mlp": []}
    # Execute: the device of the second task's model checks in first, each round
    for _ in range(2):
        for model in ("mlp", "lin"):
            report = _participate(
                world, f"dev-{model}", model, seen[model], asynchronous, max_wait_s=20
            )
            assert report is not None and report.receipt.accepted, (model, report)
            trained[model].append(report.task_id)
    # Assert: each device in its own task's rounds only, and both tasks' rounds committed
    assert trained == {"lin": [tasks["lin"]] * 2, "mlp": [tasks["mlp"]] * 2}
    for model, task in tasks.items():
        assert set(seen[model].models) == {f"/v1/tasks/{task}/model"}
        layout = world.trainers[model].spec.fingerprint.hex()
        assert all(f'"model_layouts":["{layout}"]'.encode() in b for b in seen[model].check_ins)
        # (a round closes on the service's ticker, just after its upload)
        status = wait_until(world.http, f"/v1/admin/tasks/{task}", "rounds_committed", 2)
        assert (status["rounds_committed"], status["rounds_closed"], status["version"]) == (
            2, 2, 2,
        ), status  # fmt: skip


@MODES
def test_naming_a_task_of_another_model_raises_layout_mismatch_at_the_first_check_in(
    world: World, asynchronous: bool
) -> None:
    # Prepare
    lin = _create(world.http, world.trainers["lin"], "lin")
    seen = _Requests()
    # Execute
    with pytest.raises(LayoutMismatchError) as raised:
        _participate(world, "dev", "mlp", seen, asynchronous, task_id=lin, max_wait_s=20)
    # Assert: the coordinator's 409, one check-in, nothing downloaded, no round opened
    err = raised.value
    assert (err.status, err.reason, err.task_id) == (409, MODEL_LAYOUT_MISMATCH, lin)
    assert world.trainers["lin"].spec.fingerprint.hex() in err.detail
    assert isinstance(err, ClientError) and isinstance(err, ValueError)
    assert len(seen.check_ins) == 1 and seen.models == []
    assert admin_get(world.http, f"/v1/admin/tasks/{lin}")["current_round"] is None


@MODES
def test_a_coordinator_ignoring_the_field_gets_the_dedicated_error_before_the_download(
    world: World, asynchronous: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the device sends no model_layouts (as to a coordinator that ignores it, which
    # then gives it any task): the only task is of the other model
    lin = _create(world.http, world.trainers["lin"], "lin")
    monkeypatch.setattr(sdk_client, "_declared_layouts", lambda trainer: None)
    monkeypatch.setattr(sdk_client, "_declared_names", lambda trainer: None)  # nor model_names
    seen = _Requests()
    # Execute
    with pytest.raises(LayoutMismatchError) as raised:
        _participate(world, "dev", "mlp", seen, asynchronous, max_wait_s=20)
    # Assert: the SDK's own refusal (status 0), naming the task; the model never asked for
    err = raised.value
    assert (err.status, err.reason, err.task_id) == (0, MODEL_LAYOUT_MISMATCH, lin)
    assert isinstance(err, ClientError) and isinstance(err, ValueError)
    assert f"task {lin}'s model 'lin'" in err.detail
    assert seen.models == []
    assert all(b"model_layouts" not in b for b in seen.check_ins)


def test_a_trainer_without_a_spec_sends_the_check_in_it_sent_before(world: World) -> None:
    # Prepare: a task of another shape than SoftmaxTrainer's data (it trains any layout)
    _create(world.http, world.trainers["lin"], "lin")
    seen = _Requests()
    x, y = _data(0)
    # Execute
    with Client(world.url, str(world.root / "d"), mods=(seen.sync_mod,)) as c:
        c.register()
        report = c.participate(SoftmaxTrainer(), x, y, max_wait_s=20)
    # Assert: assigned, and no model_layouts key in the body
    assert report is not None
    assert seen.check_ins and all(b"model_layouts" not in b for b in seen.check_ins)


def test_the_check_in_body_carries_the_layout_after_the_features(tmp_path: Path) -> None:
    # Prepare: a mock coordinator keeping the bodies
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 5.0})

    layout = "0123456789abcdef"
    # Execute
    with Client("http://c", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        c._run(sdk_client._check_in_flow(c._core, 3, float("inf"), (layout,)))
        c._run(sdk_client._check_in_flow(c._core, None, float("inf"), None))
    # Assert: the exact bytes; none without a layout
    cap = sdk_client.MAX_MODEL_BYTES
    assert bodies == [
        f'{{"task_id":3,"max_model_bytes":{cap},"features":["error_feedback_off"],'
        f'"model_layouts":["{layout}"]}}'.encode(),
        f'{{"max_model_bytes":{cap},"features":["error_feedback_off"]}}'.encode(),
    ]


def test_declared_layouts_come_from_a_trainers_spec_only(artifacts: dict[str, Path]) -> None:
    trainer = OrtTrainer.from_dir(artifacts["lin"])
    assert sdk_client._declared_layouts(trainer) == (trainer.spec.fingerprint.hex(),)
    assert sdk_client._declared_layouts(SoftmaxTrainer()) is None  # type: ignore[arg-type]
    from sdk.trainer import TorchTrainer

    torch_trainer = TorchTrainer(torch.nn.Linear(16, 10))
    assert sdk_client._declared_layouts(torch_trainer) is None


def test_the_refusal_message_adds_dots_only_when_shapes_are_cut(
    artifacts: dict[str, Path],
) -> None:
    # Prepare: an assignment-like task of the other model's layout (3 tensors: none cut)
    trainer = OrtTrainer.from_dir(artifacts["mlp"])
    other = OrtTrainer.from_dir(artifacts["lin"]).spec
    task = type("A", (), {})()
    task.task_id, task.model_name = 5, "lin"
    task.spec = [TensorShape(e.name, list(e.shape)) for e in other.entries]
    # Execute
    with pytest.raises(LayoutMismatchError) as raised:
        sdk_client._check_layout(task, trainer)
    # Assert
    text = raised.value.detail
    assert "shapes [(8, 16), (8,), (10, 8), (10,)])" in text
    assert "shapes [(10, 16), (10,)])" in text and "..." not in text


def test_the_error_survives_pickling_whole() -> None:
    err = LayoutMismatchError(409, MODEL_LAYOUT_MISMATCH, "task 3's model ...", 3)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is LayoutMismatchError and str(again) == str(err)
    assert (again.status, again.reason, again.task_id) == (409, MODEL_LAYOUT_MISMATCH, 3)
