"""sdk.Client / AsyncClient: transport seam, retries, idempotency, app-directory persistence."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import CodecConfig, ErrorFeedback, ModelSpec, UpdateCodec
from protocol import auth
from protocol.messages import Assignment, CodecParams, TensorShape, TrainingParams
from sdk import AsyncClient, Client
from sdk.client import ClientError
from sdk.device_store import DeviceStore, PendingUpload

from .test_client_secure import ShiftTrainer

SPEC = ModelSpec.from_shapes([("w", (4, 8)), ("b", (4,))])
RECEIPT = {
    "round_id": 5,
    "device_id": "0" * 32,
    "accepted": True,
    "duplicate": False,
    "payload_bytes": 10,
    "reports": 1,
}


def _assignment() -> Assignment:
    return Assignment(
        task_id=1,
        round_id=5,
        base_version=0,
        model_name="m",
        spec=[TensorShape("w", [4, 8]), TensorShape("b", [4])],
        codec=CodecParams(topk=0.5, bits=8),
        training=TrainingParams(1, 4, 0.1),
        deadline_unix=0.0,
        model_path="/v1/tasks/1/model",
        upload_path="/v1/rounds/5/updates",
        max_upload_bytes=10_000,
        seed=0,
    )


def _round_closed(request: httpx.Request) -> httpx.Response:
    return httpx.Response(409, json={"reason": "round_closed", "detail": "late"})


def _left_offline(root: Path, delta: np.ndarray) -> PendingUpload:
    """An app in `root` encodes `delta` for round 5, then finds the network gone: the upload
    stays pending in the app directory, as after a crash before any answer."""

    def dead(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("offline")

    first = Client(
        "http://coord", str(root), transport=httpx.MockTransport(dead), retries=1,
        sleep=lambda s: None,
    )  # fmt: skip
    params = np.zeros(SPEC.size, np.float32)
    pending = first._core.encode(_assignment(), SPEC, params, params + delta, 8)
    with pytest.raises(httpx.ConnectError):
        first.upload(pending, SPEC)
    first.close()  # the app is gone: its claim on the directory ends (one client per app_dir)
    return pending


def test_signed_requests_verify_with_the_stored_key(tmp_path: Path) -> None:
    # Prepare: a handler that checks every signature like the coordinator does
    seen: list[httpx.Request] = []
    key_holder: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        pub = base64.urlsafe_b64decode(body["public_key"] + "=")
        key_holder["pub"] = pub
        fields = auth.fields_from_headers({k.lower(): v for k, v in request.headers.items()})
        msg = auth.signing_message(
            method=request.method,
            target=request.url.raw_path.decode(),
            device_id=fields.device_id,
            round_id=fields.round_id,
            body_hash=auth.body_sha256(request.content),
            timestamp_ms=fields.timestamp_ms,
            nonce=fields.nonce,
        )
        assert auth.verify(pub, msg, fields.signature)
        return httpx.Response(200, json={"device_id": fields.device_id, "created": True})

    # Execute
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        device_id = c.register()
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c2:
        device_id_again = c2.register()
    # Assert: the key persisted in the app directory, so the identity survives a restart
    assert device_id == device_id_again == auth.device_id_for(key_holder["pub"])
    assert (tmp_path / "device_key").stat().st_mode & 0o777 == 0o600
    assert seen[0].headers["x-plume-nonce"] != seen[1].headers["x-plume-nonce"]


def test_retries_with_backoff_keep_the_idempotency_key(tmp_path: Path) -> None:
    # Prepare: two failures (a dropped connection, then a 503) before success
    attempts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        if len(attempts) == 1:
            raise httpx.ConnectError("connection reset")
        if len(attempts) == 2:
            return httpx.Response(503, headers={"retry-after": "0.5"}, json={"reason": "x"})
        return httpx.Response(200, json=RECEIPT)

    sleeps: list[float] = []
    client = Client(
        "http://coord",
        str(tmp_path),
        transport=httpx.MockTransport(handler),
        backoff_s=0.1,
        sleep=sleeps.append,
    )
    a = _assignment()
    params = np.zeros(SPEC.size, np.float32)
    pending = client._core.encode(a, SPEC, params, params + 0.1, 8)
    # Execute
    receipt = client.upload(pending, SPEC)
    # Assert
    assert receipt.accepted and len(attempts) == 3
    keys = {r.headers["idempotency-key"] for r in attempts}
    nonces = {r.headers["x-plume-nonce"] for r in attempts}
    assert keys == {pending.key} and len(nonces) == 3  # same key, fresh signature each time
    # backoff (0.1 s with equal jitter: 0.05 to 0.1), then Retry-After (0.5 s, up to 20 % more)
    assert 0.05 <= sleeps[0] <= 0.1 and 0.5 <= sleeps[1] <= 0.6
    assert DeviceStore(tmp_path).load_pending() is None  # acknowledged: no longer pending


def test_errors_carry_status_and_reason(tmp_path: Path) -> None:
    client = Client("http://coord", str(tmp_path), transport=httpx.MockTransport(_round_closed))
    with pytest.raises(ClientError) as err:
        client.check_in()
    assert (err.value.status, err.value.reason) == (409, "round_closed")


@pytest.mark.parametrize("reason", ["round_closed", "task_refused"])
def test_refused_upload_returns_its_content_to_the_residual(tmp_path: Path, reason: str) -> None:
    # Prepare
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"reason": reason, "detail": "refused"})

    client = Client("http://coord", str(tmp_path), transport=httpx.MockTransport(refuse))
    a = _assignment()
    params = np.zeros(SPEC.size, np.float32)
    delta = np.linspace(-1, 1, SPEC.size).astype(np.float32)
    pending = client._core.encode(a, SPEC, params, params + delta, 8)
    # Execute
    with pytest.raises(ClientError):
        client.upload(pending, SPEC)
    # Assert: nothing the device computed is lost; the residual now holds the whole delta
    ef = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert ef is not None
    np.testing.assert_allclose(ef.residual, delta, atol=1e-6)
    assert client.resume_pending() is None  # and nothing is left pending


def test_pending_upload_and_residual_survive_a_restart(tmp_path: Path) -> None:
    # Prepare: the app encodes an update, then dies before any answer arrives
    pending = _left_offline(tmp_path, np.full(SPEC.size, 0.3, np.float32))
    residual = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert residual is not None
    # Execute: a new process on the same app directory resumes the upload
    sent: list[httpx.Request] = []

    def ok(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={**RECEIPT, "duplicate": True})

    second = Client("http://coord", str(tmp_path), transport=httpx.MockTransport(ok))
    receipt = second.resume_pending()
    # Assert: same frame, same key; the residual is the one computed before the crash
    assert receipt is not None and receipt.duplicate
    assert sent[0].content == pending.frame
    assert sent[0].headers["idempotency-key"] == pending.key
    again = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert again is not None
    np.testing.assert_array_equal(again.residual, residual.residual)
    assert second.resume_pending() is None


def test_a_resumed_upload_refused_after_a_restart_returns_its_content(tmp_path: Path) -> None:
    # Prepare: the app encodes an update and dies offline; by its next start the round closed
    delta = np.linspace(-1, 1, SPEC.size).astype(np.float32)
    _left_offline(tmp_path, delta)
    # Execute: a new process resumes it (it knows no spec: the one stored with the upload)
    second = Client("http://coord", str(tmp_path), transport=httpx.MockTransport(_round_closed))
    assert second.resume_pending() is None
    # Assert: the whole delta is back in the residual and nothing is pending
    ef = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert ef is not None
    np.testing.assert_allclose(ef.residual, delta, atol=1e-6)
    assert DeviceStore(tmp_path).load_pending() is None


def test_train_round_settles_an_upload_left_unsent_before_encoding_a_new_one(
    tmp_path: Path,
) -> None:
    # Prepare: round 5's upload failed offline; the coordinator then refuses it (closed)
    import torch

    from sdk.trainer import TorchTrainer

    delta = np.linspace(-1, 1, SPEC.size).astype(np.float32)
    _left_offline(tmp_path, delta)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return _round_closed(request)

    client = Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler))
    # Execute: the next train_round (its model download is refused too: the test stops there)
    with pytest.raises(ClientError):
        client.train_round(
            _assignment(), TorchTrainer(torch.nn.Linear(8, 4)), np.zeros((2, 8), np.float32),
            np.zeros(2, np.int64),
        )  # fmt: skip
    # Assert: the old upload went out first, was refused, and its delta is in the residual
    assert seen[0] == "/v1/rounds/5/updates"
    ef = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert ef is not None and DeviceStore(tmp_path).load_pending() is None
    np.testing.assert_allclose(ef.residual, delta, atol=1e-6)


def test_async_client_over_mock_transport(tmp_path: Path) -> None:
    calls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/v1/devices":
            fields = auth.fields_from_headers(dict(request.headers.items()))
            return httpx.Response(200, json={"device_id": fields.device_id, "created": True})
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 2.5})

    async def main() -> tuple[str, float]:
        async with AsyncClient(
            "http://coord", str(tmp_path), transport=httpx.MockTransport(handler)
        ) as c:
            device_id = await c.register()
            answer = await c.check_in(3)
            return device_id, answer.retry_after_s

    device_id, retry = asyncio.run(main())
    assert len(device_id) == 32 and retry == 2.5 and calls == ["/v1/devices", "/v1/checkin"]


def test_mods_wrap_every_request(tmp_path: Path) -> None:
    log: list[tuple[str, int]] = []

    def size_logger(request: httpx.Request, call_next: object) -> httpx.Response:
        response = call_next(request)  # type: ignore[operator]
        log.append((request.url.path, response.status_code))
        return response  # type: ignore[no-any-return]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 1.0})

    client = Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(handler), mods=(size_logger,)
    )
    client.check_in()
    assert log == [("/v1/checkin", 200)]


def test_device_store_refuses_a_foreign_residual(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    ef = ErrorFeedback(10)
    store.save_residual(ef)
    assert store.load_residual(10) is not None
    assert store.load_residual(11) is None  # another model's residual is not reused
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=8))
    assert codec.config.bits == 8


def create_readme_task(admin: Any, model: Any) -> int:
    """The README's task (`create-task --model mlp --rounds 1 --clients-per-round 1
    --selection-timeout 1`, with a shorter timeout) on `admin`, an AdminClient; its id."""
    from protocol.messages import TaskConfig
    from sdk.flat import get_flat_params, spec_from_module

    spec = spec_from_module(model)
    task_id: int = admin.create_task(
        TaskConfig(
            name="readme",
            model_name="mlp",
            spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
            rounds=1,
            clients_per_round=1,
            selection_timeout_s=0.2,
            training=TrainingParams(1, 32, 0.05),
        ),
        get_flat_params(model),
    )
    return task_id


def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    """The embedding example in docs/http-api.md, executed verbatim against a loopback server."""
    import torch

    from coordinator.service import AdminClient, ServerThread, ServiceConfig
    from mobile_sim.models import build_model

    doc = (Path(__file__).parents[2] / "docs" / "http-api.md").read_text()
    block = re.search(r"## Embedding the SDK in an app\n\n```python\n(.*?)```", doc, re.S)
    assert block is not None
    code = block.group(1)
    assert 8 <= len(code.strip().splitlines()) <= 14
    readme = Path(__file__).parents[2] / "README.md"
    if readme.exists() and "from sdk import Client" in readme.read_text():
        # The README shows the same example; keep the two copies identical.
        blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
        assert any(b == code for b in blocks if "from sdk import Client" in b)
    torch.set_num_threads(1)
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token="t", poll_s=0.05)
    with ServerThread(cfg) as url, AdminClient(url, "t") as admin:
        task_id = create_readme_task(admin, build_model("mlp"))
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            exec(compile(code.replace("http://127.0.0.1:8080", url), "http-api.md", "exec"), {})
        finally:
            os.chdir(cwd)
        for _ in range(300):  # the round closes asynchronously after the last report
            status = admin.status(task_id)
            if status.version == 1:
                break
            time.sleep(0.02)
        rounds = admin.rounds(task_id)
    assert (tmp_path / "plume-app" / "device_key").exists()
    assert rounds[0].reports == 1 and rounds[0].state == "committed"
    assert status.version == 1 and status.state == "done"


def test_client_imports_without_torch() -> None:
    # The ONNX-runtime device embeds the client on machines without PyTorch.
    import subprocess
    import sys

    code = "import sys, sdk; sdk.Client; import sdk.client; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_trainer_whose_model_has_another_layout_is_refused_before_training() -> None:
    # Prepare: the task's model is w[4, 8] + b[4]; one torch model matches, one has the same
    # 36 parameters as w[8, 4] + b[4] (it would load, train and upload a wrong update), and a
    # duck-typed trainer declares its layout through a ModelSpec
    import types

    import torch

    from sdk.client import _train
    from sdk.trainer import TorchTrainer

    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    y = np.arange(6, dtype=np.int64) % 4
    core = types.SimpleNamespace(device_id="ab" * 16)
    params = np.zeros(SPEC.size, dtype=np.float32)

    class Transposed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(8, 4))
            self.b = torch.nn.Parameter(torch.zeros(4))

    class Declared:
        spec = ModelSpec.from_shapes([("w", (36,))])

        def train(self, *args: object, **kwargs: object) -> object:
            raise AssertionError("must not be called")

    # Execute / Assert
    trained, n, _ = _train(core, _assignment(), params, TorchTrainer(torch.nn.Linear(8, 4)), x, y)  # type: ignore[arg-type]
    assert n == 6 and trained.shape == (SPEC.size,) and np.any(trained != 0)
    for bad in (TorchTrainer(Transposed()), Declared()):
        with pytest.raises(ValueError, match="does not have the layout of task 1"):
            _train(core, _assignment(), params, bad, x, y)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "reason", "content_back", "settled"),
    [
        (422, "bad_frame", True, True),  # decoded and refused: never taken
        (413, "too_large", True, True),  # the same frame is always too large for its round
        (409, "invalid_state", True, True),
        (
            409,
            "duplicate_upload",
            True,
            True,
        ),  # reported in that round under another key: not taken
        (503, "store_unavailable", False, False),  # unknown: an earlier try may have landed
        (401, "stale_timestamp", False, False),
        (429, "rate_limited", False, False),
    ],
)
def test_a_new_round_settles_a_pending_upload_or_waits(
    tmp_path: Path, status: int, reason: str, content_back: bool, settled: bool
) -> None:
    # Prepare: an upload left pending offline; its re-send gets `status`/`reason`
    delta = np.linspace(-1, 1, SPEC.size).astype(np.float32)
    pending = _left_offline(tmp_path, delta)
    before = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert before is not None
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.endswith("/updates") and len(seen) == 1:
            return httpx.Response(status, json={"reason": reason, "detail": "refused"})
        return httpx.Response(500, json={"reason": "stop", "detail": "the test ends here"})

    client = Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(handler), retries=0,
        sleep=lambda s: None,
    )  # fmt: skip
    a = dataclasses.replace(_assignment(), round_id=pending.round_id + 1)

    # Execute: the next round (its model download is answered 500, which ends the call)
    with pytest.raises(ClientError) as err:
        client.train_round(
            a, ShiftTrainer(0.01), np.zeros((4, 4), np.float32), np.zeros(4, np.int64)
        )

    # Assert: settled (and then the download tried), or kept pending and nothing else sent
    store = DeviceStore(tmp_path)
    after = store.load_residual(SPEC.size, 1)
    assert after is not None
    if settled:
        assert store.load_pending() is None
        assert err.value.reason == "stop" and len(seen) == 2
    else:
        assert store.load_pending() is not None and store.load_pending().key == pending.key
        assert err.value.reason == reason and seen == [f"/v1/rounds/{pending.round_id}/updates"]
    if content_back:
        np.testing.assert_allclose(after.residual, delta, atol=1e-6)  # the whole delta
    else:
        np.testing.assert_array_equal(after.residual, before.residual)


@pytest.mark.parametrize(
    ("status", "reason", "settled"), [(422, "bad_frame", True), (503, "x", False)]
)
def test_the_async_client_settles_a_pending_upload_the_same_way(
    tmp_path: Path, status: int, reason: str, settled: bool
) -> None:
    # Prepare: as in the sync test
    pending = _left_offline(tmp_path, np.linspace(-1, 1, SPEC.size).astype(np.float32))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/updates"):
            return httpx.Response(status, json={"reason": reason, "detail": "refused"})
        return httpx.Response(500, json={"reason": "stop", "detail": "the test ends here"})

    a = dataclasses.replace(_assignment(), round_id=pending.round_id + 1)

    async def run() -> str:
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://coord", str(tmp_path), transport=transport, retries=0) as c:
            with pytest.raises(ClientError) as err:
                await c.train_round(
                    a, ShiftTrainer(0.01), np.zeros((4, 4), np.float32), np.zeros(4, np.int64)
                )
            return err.value.reason

    # Execute
    ended_by = asyncio.run(run())

    # Assert
    assert (DeviceStore(tmp_path).load_pending() is None) == settled
    assert ended_by == ("stop" if settled else reason)
