"""Upload bodies read into memory at once are bounded (helper-275's F3).

Before, each upload held its whole body in memory until its signature and round were checked,
however many arrived together: nothing bounded the total, and devices that were registered but
not selected for the round could use it too (their 403 `not_selected` came after the body was
read; helper-275's `e_memory.py 64 outsiders 4`: 64 near-cap bodies added 42 MB). Now each
upload reserves its body's bytes as they arrive in `ServiceConfig.upload_buffer_bytes` (`serve
--upload-buffer-mb`; helper-290: before, its declared `Content-Length` up front, which idle
connections could fill, tests/coordinator/test_h290_budget_as_bytes_arrive.py); past the
budget it is answered 503 `busy` with `Retry-After` and `connection: close`, the rest of its
body unread, the same way for a selected device and an outsider.

A real coordinator on loopback: N uploads whose bodies stall one byte short of their end hold
the budget (all but N bytes of it); the (N+1)th upload, from a selected device, and one from a
registered device not selected, are refused; the N complete and are accepted; the refused
device's retry is accepted; the round commits with exactly those N+1 updates, byte for byte.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import UpdateCodec
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.auth import BodyBudget
from protocol import auth
from protocol.names import Reason

from .test_service_hardening import _register
from .test_service_support import (
    ADMIN,
    SPEC,
    admin_get,
    create_task,
    serve_cli,
    signed_headers,
    task_config,
    wait_until,
)

N = 4  # uploads the budget holds
OCTET = "application/octet-stream"


def _frames(count: int) -> list[bytes]:
    """`count` update frames of the test task's codec (seeded), each of its own content."""
    codec = UpdateCodec(SPEC, task_config().codec.to_config())
    rng = np.random.default_rng(283)
    out = []
    for _ in range(count):
        delta = rng.normal(0, 0.01, SPEC.size).astype(np.float32)
        frame, _ = codec.encode(delta, rng, 10.0)
        out.append(frame)
    return out


def _check_in(http: httpx.Client, key: bytes, task_id: int) -> dict[str, Any]:
    body = json.dumps({"task_id": task_id}).encode()
    headers = {
        **signed_headers(key, "POST", "/v1/checkin", 0, body),
        "content-type": "application/json",
    }
    r = http.post("/v1/checkin", content=body, headers=headers)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def _upload_headers(key: bytes, round_id: int, frame: bytes) -> dict[str, str]:
    target = f"/v1/rounds/{round_id}/updates"
    return {
        **signed_headers(key, "POST", target, round_id, frame),
        "content-type": OCTET,
        "idempotency-key": uuid.uuid4().hex,
        "content-length": str(len(frame)),
    }


@pytest.fixture()
def coordinator(tmp_path: Path) -> Iterator[tuple[ServerThread, list[bytes]]]:
    frames = _frames(N + 1)
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"),
        admin_token=ADMIN,
        poll_s=0.05,
        # Exactly the first N frames' bodies: the (N+1)th does not fit beside them, even
        # while each of them is one byte short
        upload_buffer_bytes=sum(len(f) for f in frames[:N]),
    )
    server = ServerThread(cfg)
    server.start()
    try:
        yield server, frames
    finally:
        server.stop()


def test_an_upload_past_the_buffer_is_503_busy_before_its_body_and_the_round_is_intact(
    coordinator: tuple[ServerThread, list[bytes]],
) -> None:
    server, frames = coordinator
    budget: BodyBudget = server.app.state.verifier.body_budget
    cfg = task_config(clients_per_round=N + 1, min_reports=N + 1, deadline_s=120.0)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        # Prepare: N+1 selected devices and one registered device left out of the round
        task_id = create_task(http, cfg)
        keys = [auth.generate_private_key() for _ in range(N + 2)]
        for key in keys:
            assert _register(http, key).status_code == 200
        selected, outsider = keys[: N + 1], keys[N + 1]
        assigned: dict[int, int] = {}  # device index -> round id
        give_up = time.monotonic() + 30
        while len(assigned) < N + 1 and time.monotonic() < give_up:
            for i, key in enumerate(selected):
                if i not in assigned:
                    answer = _check_in(http, key, task_id)
                    if answer.get("assignment"):
                        assigned[i] = answer["assignment"]["round_id"]
            time.sleep(0.05)
        rounds = set(assigned.values())
        assert len(assigned) == N + 1 and len(rounds) == 1, assigned
        (rid,) = rounds
        target = f"/v1/rounds/{rid}/updates"

        # Execute: N uploads whose bodies stop one byte short of their end until `gate` opens
        gate = threading.Event()
        slow: list[httpx.Response | BaseException | None] = [None] * N

        def send_slowly(i: int) -> None:
            frame = frames[i]

            def body() -> Iterator[bytes]:
                yield frame[:-1]
                gate.wait(60)
                yield frame[-1:]

            try:
                with httpx.Client(base_url=server.url, timeout=60) as own:
                    slow[i] = own.post(
                        target, content=body(), headers=_upload_headers(selected[i], rid, frame)
                    )
            except BaseException as exc:  # reported by the assertion below
                slow[i] = exc

        threads = [threading.Thread(target=send_slowly, args=(i,)) for i in range(N)]
        for t in threads:
            t.start()
        sent = sum(len(f) - 1 for f in frames[:N])
        give_up = time.monotonic() + 30
        while (budget.bodies, budget.held) != (N, sent) and time.monotonic() < give_up:
            time.sleep(0.02)
        held = (budget.bodies, budget.held)
        last = frames[N]
        refused = http.post(target, content=last, headers=_upload_headers(selected[N], rid, last))
        # ... and a registered device not selected for the round, its body the same size
        stranger = http.post(target, content=last, headers=_upload_headers(outsider, rid, last))
        gate.set()
        for t in threads:
            t.join(60)
        retried = http.post(target, content=last, headers=_upload_headers(selected[N], rid, last))
        status = wait_until(http, f"/v1/rounds/{rid}", "state", "committed")
        stored = server.app.state.store.updates(rid)
        task = admin_get(http, f"/v1/admin/tasks/{task_id}")

    # Assert: the N slow bodies held what they had sent, the budget but N bytes
    assert held == (N, sum(len(f) for f in frames[:N]) - N)
    # ... the (N+1)th was refused at its first part (it holds more than N bytes), saying so,
    # the connection closed
    assert len(last) > N
    assert refused.status_code == 503, refused.text
    assert refused.json()["reason"] == str(Reason.BUSY) == "busy"
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["connection"] == "close"
    assert "--upload-buffer-mb" in refused.json()["detail"]
    # ... and the outsider got the very same answer (no selection membership revealed)
    assert stranger.status_code == 503 and stranger.json() == refused.json()
    # ... the N slow uploads were accepted, and the refused device's retry too
    for got in slow:
        assert isinstance(got, httpx.Response), got
        assert got.status_code == 200, got.text
        assert got.json()["duplicate"] is False
    assert retried.status_code == 200, retried.text
    assert retried.json()["duplicate"] is False
    # ... the round committed with exactly the N+1 updates sent, byte for byte
    assert status["state"] == "committed", status
    assert status["reports"] == N + 1
    assert sorted(row.frame for row in stored) == sorted(frames)
    assert task["version"] == 1, task
    # ... and every reservation was given back
    assert (budget.bodies, budget.held) == (0, 0)
    assert budget.refused == 2


def test_the_budget_always_lets_one_body_in_and_0_is_no_limit() -> None:
    # Prepare
    small, off = BodyBudget(10), BodyBudget(0)
    # Execute / Assert: a body above the limit goes in alone, not beside another
    assert small.take(100) is True
    assert small.take(1) is False
    small.give(100)
    assert small.take(6) is True and small.take(4) is True and small.take(1) is False
    assert (small.held, small.bodies, small.refused) == (10, 2, 2)
    assert all(off.take(10**9) for _ in range(5))
    with pytest.raises(ValueError, match="integer >= 0"):
        BodyBudget(-1)


def test_serve_flag_sets_the_budget_in_mib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare
    run, seen = serve_cli(monkeypatch)
    db = str(tmp_path / "plume.db")
    # Execute
    assert run("--db", db, "--upload-buffer-mb", "3") == 0
    assert run("--db", db) == 0
    # Assert: MiB to bytes; the default 256 MiB is ServiceConfig's
    assert seen[0].upload_buffer_bytes == 3 << 20
    assert seen[1].upload_buffer_bytes == 256 << 20 == ServiceConfig().upload_buffer_bytes
    with pytest.raises(SystemExit):
        run("--db", db, "--upload-buffer-mb", "-1")
    with pytest.raises(ValueError, match="upload_buffer_bytes"):
        ServiceConfig(upload_buffer_bytes=-1)
