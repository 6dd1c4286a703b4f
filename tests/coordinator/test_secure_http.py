"""Secure rounds over HTTP: the router in coordinator/service/_secagg_routes.py and the SDK's
HttpSecureDevice, on a loopback uvicorn server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI

from coordinator.secure import SecureConfig, SecureCoordinator
from coordinator.service._secagg_routes import SecureRegistry, secagg_router
from protocol.secagg import Stage
from sdk.secure import HttpSecureDevice, SecureParticipant

D = 3000
STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)


@contextmanager
def _serve(app: FastAPI) -> Iterator[str]:
    """`app` on a loopback port uvicorn binds itself (port 0), as its URL once it has started.
    A port found free and closed before could be bound by another process in between."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert server.started, "the loopback uvicorn server did not start in 20 s"
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)


@contextmanager
def _setup(n: int) -> Iterator[tuple[SecureRegistry, httpx.Client, list[str], dict]]:
    coord = SecureCoordinator(np.zeros(D, np.float32), SecureConfig(coord_fraction=0.1))
    registry = SecureRegistry(coord)
    app = FastAPI()
    app.include_router(secagg_router(registry, retry_after_s=0.01))
    devs = [f"dev-{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    ups = {d: rng.normal(0, 0.01, D).astype(np.float32) for d in devs}
    with _serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield registry, client, devs, ups


def test_secure_round_over_http_stage_by_stage() -> None:
    # Prepare
    with _setup(6) as (registry, client, devs, ups):
        _stage_by_stage(registry, client, devs, ups)


def _stage_by_stage(
    registry: SecureRegistry, client: httpx.Client, devs: list[str], ups: dict
) -> None:
    task = registry.open_round(devs)
    devices = {d: HttpSecureDevice(client, d, SecureParticipant(D)) for d in devs}
    params = registry.coordinator.params
    sessions = {d: devices[d].join(task.round_id, params) for d in devs}
    # Execute: every device uploads a stage; the last upload closes it
    for d in devs:
        devices[d].upload(task.round_id, Stage.ADVERTISE_KEYS, sessions[d].advertise())
    for d in devs:
        directory = devices[d].download(task.round_id, Stage.ADVERTISE_KEYS, 1.0)
        assert directory is not None
        devices[d].upload(task.round_id, Stage.SHARE_KEYS, sessions[d].share_keys(directory))
    for d in devs[:-1]:  # the last device drops before its masked input
        delivery = devices[d].download(task.round_id, Stage.SHARE_KEYS, 1.0)
        assert delivery is not None
        body = sessions[d].masked_input(delivery, ups[d], 1, np.random.default_rng(1))
        devices[d].upload(task.round_id, Stage.MASKED_INPUT, body)
    registry.close_stage(task.round_id, Stage.MASKED_INPUT)  # its deadline
    for d in devs[:-1]:
        request = devices[d].download(task.round_id, Stage.MASKED_INPUT, 1.0)
        assert request is not None
        devices[d].upload(task.round_id, Stage.UNMASK, sessions[d].unmask(request))
    out = registry.finish(task.round_id)
    # Assert
    assert out.committed and set(out.contributors) == set(devs[:-1])
    sent = [ups[d] - devices[d].participant.residual for d in devs[:-1]]
    np.testing.assert_allclose(out.update, np.mean(sent, axis=0), atol=1e-6)
    resp = client.get(f"/v1/secure/rounds/{task.round_id}/result")
    assert resp.json()["state"] == "committed" and resp.json()["contributors"] == 5


def test_http_refusals() -> None:
    with _setup(4) as (registry, client, devs, _):
        _refusals(registry, client, devs)


def _refusals(registry: SecureRegistry, client: httpx.Client, devs: list[str]) -> None:
    task = registry.open_round(devs)
    # A device outside the round, an unknown round, a download before the stage closes.
    r = client.get(f"/v1/secure/rounds/{task.round_id}/setup", headers={"x-plume-device": "x"})
    assert r.status_code == 403
    assert (
        client.get("/v1/secure/rounds/99/setup", headers={"x-plume-device": devs[0]}).status_code
        == 404
    )
    url = f"/v1/secure/rounds/{task.round_id}/stages/{Stage.ADVERTISE_KEYS}"
    r = client.get(url, headers={"x-plume-device": devs[0]})
    assert r.status_code == 425 and "retry-after" in r.headers
    r = client.post(url, content=b"junk", headers={"x-plume-device": devs[0]})
    assert r.status_code == 422 and r.json()["reason"] == "MalformedMessage"
    # Bodies are capped from the round's plan before they are read (an advertisement is 81 B)
    r = client.post(url, content=b"\x00" * 4096, headers={"x-plume-device": devs[0]})
    assert r.status_code == 413 and r.json()["reason"] == "too_large"
    # Nothing follows the unmask stage, and nothing is uploaded in a terminal one
    unmask = f"/v1/secure/rounds/{task.round_id}/stages/{Stage.UNMASK}"
    r = client.get(unmask, headers={"x-plume-device": devs[0]})
    assert r.status_code == 409 and r.json()["reason"] == "WrongStage"
    done = f"/v1/secure/rounds/{task.round_id}/stages/{Stage.DONE}"
    r = client.post(done, content=b"PSA1", headers={"x-plume-device": devs[0]})
    assert r.status_code == 409 and r.json()["reason"] == "WrongStage"
    assert registry.stage_counts(task.round_id) == dict.fromkeys(map(str, STAGES), 0)


def test_devices_in_threads_with_a_straggler() -> None:
    with _setup(7) as (registry, client, devs, ups):
        _threads(registry, client, devs, ups)


def _threads(registry: SecureRegistry, client: httpx.Client, devs: list[str], ups: dict) -> None:
    task = registry.open_round(devs)
    params = registry.coordinator.params
    live = devs[:-1]  # the last device never shows up
    ok: dict[str, bool] = {}

    def run(d: str) -> None:
        dev = HttpSecureDevice(client, d, SecureParticipant(D), poll_s=0.01)
        ok[d] = dev.run_round(task.round_id, params, ups[d], 1, np.random.default_rng(2), 20.0)

    threads = [threading.Thread(target=run, args=(d,)) for d in live]
    for t in threads:
        t.start()
    # The orchestrator closes the first stage at its "deadline"; the rest close by themselves.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        grp = registry._entry(task.round_id).groups[0]
        if len(grp.uploaded.get(Stage.ADVERTISE_KEYS, ())) == len(live):
            break
        time.sleep(0.01)
    registry.close_stage(task.round_id, Stage.ADVERTISE_KEYS)
    for t in threads:
        t.join(30)
    out = registry.finish(task.round_id)
    assert all(ok.values()) and len(ok) == len(live)
    assert out.committed and set(out.contributors) == set(live)
