"""`Client`/`AsyncClient(model_dtype="fp16")`: a download that is a snapshot asks for
`dtype=fp16` (about half the bytes of fp32). An fp16 snapshot is not the coordinator's model,
so the device's next download is a snapshot again (never a delta chain from it), and the
coordinator's 409 `invalid_state` for a model beyond fp16's range is asked again as fp32 once,
in the same call. Default fp32: no change. Before, the SDK always asked for fp32 (no
`model_dtype` argument: these tests fail with TypeError).

Real coordinator on loopback (`ServerThread`), as tests/sdk/test_h207_task_models.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import ModelSpec, model_digest
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from protocol.messages import TensorShape
from protocol.names import Header, ModelEncoding
from sdk import AsyncClient, Client
from tests.coordinator.test_service_support import (
    ADMIN,
    SHAPES,
    SoftmaxTrainer,
    initial_params,
    local_data,
    task_config,
)

X, Y = local_data(0)
SPEC = ModelSpec.from_shapes(SHAPES)
MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


class _Seen:
    """A client mod keeping every model download: (query params, status, encoding, exact,
    body bytes)."""

    def __init__(self) -> None:
        self.downloads: list[tuple[dict[str, str], int, str | None, str | None, int]] = []

    def note(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if request.url.path.endswith("/model"):
            self.downloads.append(
                (
                    dict(request.url.params),
                    response.status_code,
                    response.headers.get(str(Header.MODEL_ENCODING)),
                    response.headers.get(str(Header.MODEL_EXACT)),
                    len(response.content),
                )
            )
        return response

    def sync_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        return self.note(request, nxt(request))

    async def async_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        return self.note(request, await nxt(request))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        yield url


def _one_device(**over: Any) -> Any:
    return task_config(clients_per_round=1, selection_timeout_s=0.2, deadline_s=20, **over)


def _rounds(
    url: str, root: Path, task_id: int, n: int, seen: _Seen, asynchronous: bool, dtype: str
) -> tuple[list[Any], Any]:
    """`n` rounds of `task_id` by one device (`participate`); also its held model after and
    its bandwidth ledger."""
    if not asynchronous:
        with Client(url, str(root), mods=(seen.sync_mod,), model_dtype=dtype) as client:
            client.register()
            reports = [
                client.participate(SoftmaxTrainer(), X, Y, task_id=task_id, max_wait_s=20)
                for _ in range(n)
            ]
            held = client._core.store.load_model(task_id, SPEC.size)
            return reports, (held, dict(client.bandwidth))

    async def run() -> tuple[list[Any], Any]:
        async with AsyncClient(url, str(root), mods=(seen.async_mod,), model_dtype=dtype) as c:
            await c.register()
            reports = [
                await c.participate(SoftmaxTrainer(), X, Y, task_id=task_id, max_wait_s=20)
                for _ in range(n)
            ]
            return reports, (c._core.store.load_model(task_id, SPEC.size), dict(c.bandwidth))

    return asyncio.run(run())


@pytest.mark.parametrize("bad", ["fp8", "FP16", "float16", "", None, 16])
@MODES
def test_a_model_dtype_other_than_fp32_or_fp16_is_refused_before_app_dir_is_made(
    tmp_path: Path, bad: Any, asynchronous: bool
) -> None:
    app_dir = tmp_path / "app"
    cls: Any = AsyncClient if asynchronous else Client
    with pytest.raises(ValueError, match="model_dtype"):
        cls("http://127.0.0.1:1", str(app_dir), model_dtype=bad)
    assert not app_dir.exists()


@MODES
def test_fp16_device_downloads_half_the_bytes_trains_and_downloads_a_snapshot_again(
    server: str, tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: two tasks with the same initial model (version 0), one device each: fp32, fp16
    with AdminClient(server, ADMIN) as admin:
        t32 = admin.create_task(_one_device(rounds=3), initial_params())
        t16 = admin.create_task(_one_device(rounds=3), initial_params())
    seen32, seen16 = _Seen(), _Seen()
    # Execute: one round of the fp32 device, two of the fp16 device
    r32, (_, ledger32) = _rounds(server, tmp_path / "d32", t32, 1, seen32, asynchronous, "fp32")
    r16, (held, _) = _rounds(server, tmp_path / "d16", t16, 2, seen16, asynchronous, "fp16")
    # Assert: the default asks for fp32 as before; the fp16 device asks for fp16
    assert [d[0]["dtype"] for d in seen32.downloads] == ["fp32"]
    assert [d[0]["dtype"] for d in seen16.downloads] == ["fp16", "fp16"]
    # its first download (the same model version 0) is about half the bytes
    b32, b16 = seen32.downloads[0][4], seen16.downloads[0][4]
    assert r32[0].bytes_down > b32 and r16[0].bytes_down > b16  # and the check-in's bytes
    assert ledger32[r32[0].round_id]["down"]["requests"] == 3
    print(f"version-0 snapshot of {SPEC.size} parameters: fp32 {b32} B, fp16 {b16} B")
    assert 0.4 * b32 < b16 < 0.6 * b32, (b32, b16)
    # both rounds trained, uploaded and were accepted by the coordinator (digest checks passed)
    for rep in r16:
        assert rep is not None and rep.receipt.accepted and rep.num_examples == len(X)
        assert rep.download_encoding == ModelEncoding.SNAPSHOT
    # the next round's download is a snapshot again, asked without have= (no chain from the
    # inexact model), flagged inexact by the coordinator
    assert [("have" in d[0], d[1], d[2], d[3]) for d in seen16.downloads] == [
        (False, 200, ModelEncoding.SNAPSHOT, "0")
    ] * 2
    assert r16[1].model_version > r16[0].model_version
    # the device holds the fp16-rounded model, marked not exact
    assert held is not None and held[2] is False and held[1] == r16[1].model_version
    np.testing.assert_array_equal(held[0], held[0].astype(np.float16).astype(np.float32))
    # the coordinator's model of that version, rounded to fp16
    with AdminClient(server, ADMIN) as admin:
        exact = admin.model(t16, held[1])
    assert not np.array_equal(exact.params, held[0])
    np.testing.assert_array_equal(held[0], exact.params.astype(np.float16).astype(np.float32))


@MODES
def test_an_fp16_download_of_a_model_beyond_fp16_range_is_asked_again_as_fp32(
    server: str, tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: a task whose model holds 70,000 (fp16's largest finite value is 65,504)
    big = initial_params()
    big[-1] = 70000.0  # a bias: training stays finite
    with AdminClient(server, ADMIN) as admin:
        task = admin.create_task(_one_device(rounds=3), big)
    seen = _Seen()
    # Execute: one round of an fp16 device
    reports, (held, ledger) = _rounds(server, tmp_path / "d", task, 1, seen, asynchronous, "fp16")
    # Assert: fp16 refused with 409, then fp32 in the same call, counted in the round's bytes
    assert [(d[0]["dtype"], d[1]) for d in seen.downloads] == [("fp16", 409), ("fp32", 200)]
    assert seen.downloads[1][2:4] == (ModelEncoding.SNAPSHOT, "1")
    rep = reports[0]
    assert rep is not None and rep.receipt.accepted
    assert rep.bytes_down > seen.downloads[0][4] + seen.downloads[1][4]
    # one request more than a round whose download is asked once (3, the test above)
    assert ledger[rep.round_id]["down"]["requests"] == 4
    # the exact model is held, and is the coordinator's
    assert held is not None and held[2] is True
    np.testing.assert_array_equal(held[0], big)


def test_a_big_model_fp16_snapshot_is_about_half_of_fp32(server: str, tmp_path: Path) -> None:
    # A model of 100,480 parameters (784 x 128 + 128), as a device would fetch it outside a
    # round (`fetch_current`): the bytes the SDK downloads with each dtype.
    shapes = [("w", (128, 784)), ("b", (128,))]
    spec = ModelSpec.from_shapes(shapes)
    params = np.random.default_rng(7).normal(0, 0.05, spec.size).astype(np.float32)
    cfg = replace(_one_device(), spec=[TensorShape(n, list(s)) for n, s in shapes])
    with AdminClient(server, ADMIN) as admin:
        task = admin.create_task(cfg, params)
    got: dict[str, tuple[int, bool]] = {}
    for dtype in ("fp32", "fp16"):
        seen = _Seen()
        with Client(server, str(tmp_path / dtype), mods=(seen.sync_mod,), model_dtype=dtype) as c:
            c.register()
            model, version, encoding = c.fetch_current(task, spec)
            held = c._core.store.load_model(task, spec.size)
        assert (version, encoding) == (0, ModelEncoding.SNAPSHOT)
        assert held is not None
        np.testing.assert_array_equal(held[0], model)
        got[dtype] = (seen.downloads[0][4], held[2])
        if dtype == "fp32":
            np.testing.assert_array_equal(model, params)
        else:
            np.testing.assert_array_equal(model, params.astype(np.float16).astype(np.float32))
    print(f"{spec.size} parameters: fp32 {got['fp32'][0]} B, fp16 {got['fp16'][0]} B")
    assert got["fp32"][1] is True and got["fp16"][1] is False
    assert 0.4 * got["fp32"][0] < got["fp16"][0] < 0.6 * got["fp32"][0]


def test_an_fp16_snapshot_is_never_a_chain_base_whatever_the_headers_say(
    server: str, tmp_path: Path
) -> None:
    # The coordinator names its exact fp32 model in x-plume-model-digest of an fp16 snapshot
    # (docs/http-api.md says the held model's); the SDK takes either, the snapshot's own header
    # digest having checked its values. A snapshot whose header byte says fp16 is held as not
    # exact even when x-plume-model-exact says 1: the next download asks without have=.
    with AdminClient(server, ADMIN) as admin:
        task = admin.create_task(_one_device(), initial_params())
    fp16_digest = model_digest(initial_params().astype(np.float16).astype(np.float32)).hex()
    seen = _Seen()

    def lie(request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        response: httpx.Response = nxt(request)
        if request.url.path.endswith("/model"):
            response.headers[str(Header.MODEL_EXACT)] = "1"
            if len(seen.downloads) == 1:  # the second answer names the fp16 model's digest
                response.headers[str(Header.MODEL_DIGEST)] = fp16_digest
        return response

    with Client(server, str(tmp_path / "d"), mods=(seen.sync_mod, lie), model_dtype="fp16") as c:
        c.register()
        first = c.fetch_current(task, SPEC)
        second = c.fetch_current(task, SPEC)
        held = c._core.store.load_model(task, SPEC.size)
    assert [("have" in d[0], d[2]) for d in seen.downloads] == [(False, ModelEncoding.SNAPSHOT)] * 2
    assert held is not None and held[2] is False
    for params, version, _ in (first, second):
        assert version == 0 and model_digest(params).hex() == fp16_digest


@pytest.mark.parametrize("big", [False, True], ids=["fits-fp16", "beyond-fp16"])
def test_fp16_devices_ask_for_fp32_in_a_secure_round(tmp_path: Path, big: bool) -> None:
    # A secure round's download (`_secure_flow`) asks for fp32 whatever `model_dtype` says:
    # the setup's digest binds the coordinator's exact model. Asked for in fp16, the model
    # failed it (`ModelMismatch`) and the device could not take part.
    from compression import encode_snapshot

    from .test_client_secure import ADMIN as SECURE_ADMIN
    from .test_client_secure import SPEC as SECURE_SPEC
    from .test_client_secure import ShiftTrainer, _data, _in_threads, _task

    initial = np.zeros(SECURE_SPEC.size, np.float32)
    initial[:3] = [0.1, -0.3, 70000.0 if big else 2.5]
    cfg = ServiceConfig(
        db_path=str(tmp_path / "p.db"), admin_token=SECURE_ADMIN, poll_s=0.05, tick_s=0.02
    )
    seens = [_Seen() for _ in range(3)]
    with ServerThread(cfg) as url:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {SECURE_ADMIN}"}) as h:
            # Every stage closes once all three uploaded: none is meant to time out (60 s)
            secure = _task(rounds=2, stage_timeout_s=60.0)
            task = int(h.post("/v1/admin/tasks", json=secure).json()["task_id"])
            r = h.put(
                f"/v1/admin/tasks/{task}/model",
                content=encode_snapshot(initial, SECURE_SPEC, "fp32"),
                headers={"content-type": "application/octet-stream"},
            )
            assert r.status_code == 200
        clients = [
            Client(url, str(tmp_path / f"d{i}"), mods=(s.sync_mod,), model_dtype="fp16")
            for i, s in enumerate(seens)
        ]
        for c in clients:
            c.register()
        x, y = _data()
        reports = _in_threads(
            [
                lambda c=c, i=i: c.participate(ShiftTrainer(0.01 * (i + 1)), x, y, task_id=task)
                for i, c in enumerate(clients)
            ]
        )
        helds = [c._core.store.load_model(task, SECURE_SPEC.size) for c in clients]
        for c in clients:
            c.close()
    for rep, seen, held in zip(reports, seens, helds, strict=True):
        assert rep is not None and rep.completed and rep.receipt.accepted  # type: ignore[attr-defined]
        assert [(d[0]["dtype"], d[1]) for d in seen.downloads] == [("fp32", 200)]
        assert held is not None and held[2] is True
        np.testing.assert_array_equal(held[0], initial)
