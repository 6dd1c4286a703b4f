"""Hostile requests against a live coordinator: each is refused with the right status and reason,
and none changes the coordinator's state (accepted updates, global model)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol import auth
from protocol.messages import Assignment
from sdk.client import Client

from .test_service_support import ADMIN, SPEC, admin_get, create_task, signed_headers, task_config


def _headers(
    key: bytes, method: str, target: str, round_id: int, body: bytes, **kw: int
) -> dict[str, str]:
    return signed_headers(key, method, target, round_id, body, kw.get("ts"))


class World:
    """A coordinator with one open round in which device A is selected and B is not."""

    def __init__(self, url: str, root: Path) -> None:
        self.http = httpx.Client(base_url=url)
        self.task_id = create_task(
            self.http, task_config(rounds=1, clients_per_round=3, selection_timeout_s=0.2)
        )
        self.a = Client(url, str(root / "a"))
        self.a.register()
        answer = self.a.check_in(self.task_id)
        for _ in range(100):
            if answer.assignment is not None:
                break
            time.sleep(0.02)
            answer = self.a.check_in(self.task_id)
        assert answer.assignment is not None
        self.assignment: Assignment = answer.assignment
        self.b = Client(url, str(root / "b"))
        self.b.register()
        assert self.b.check_in(self.task_id).assignment is None
        params, _ = self.a.fetch_model(self.assignment)
        self.frame = self.a._core.encode(self.assignment, SPEC, params, params + 0.05, 40).frame
        self.path = f"/v1/rounds/{self.assignment.round_id}/updates"
        self.key_a = self.a._core.key
        self.key_b = self.b._core.key

    def upload(
        self, body: bytes, headers: dict[str, str], path: str | None = None
    ) -> httpx.Response:
        return self.http.post(
            path or self.path,
            content=body,
            headers={"content-type": "application/octet-stream", **headers},
        )

    def signed_upload(self, body: bytes, **kw: int) -> dict[str, str]:
        h = _headers(self.key_a, "POST", self.path, self.assignment.round_id, body, **kw)
        return {**h, "idempotency-key": "k-1"}

    def state(self) -> tuple[int, str, int]:
        r = admin_get(self.http, f"/v1/rounds/{self.assignment.round_id}")
        t = admin_get(self.http, f"/v1/admin/tasks/{self.task_id}")
        return r["reports"], t["model_digest"], t["version"]


@contextlib.contextmanager
def running_world(root: Path) -> Iterator[World]:
    """A `World` on a loopback coordinator whose store is in `root`; its clients closed after."""
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        w = World(url, root)
        yield w
        for c in (w.a, w.b):
            c.close()
        w.http.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("security")) as w:
        yield w


def _expect(resp: httpx.Response, status: int, reason: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["reason"] == reason


def test_unsigned_and_unregistered_are_401(world: World) -> None:
    before = world.state()
    _expect(world.upload(world.frame, {"idempotency-key": "k"}), 401, "unsigned")
    stranger = auth.generate_private_key()
    h = _headers(stranger, "POST", world.path, world.assignment.round_id, world.frame)
    _expect(world.upload(world.frame, {**h, "idempotency-key": "k"}), 401, "unregistered")
    assert world.state() == before


def test_tampered_body_foreign_key_and_stale_timestamp_are_401(world: World) -> None:
    before = world.state()
    headers = world.signed_upload(world.frame)
    tampered = bytearray(world.frame)
    tampered[-1] ^= 0x01
    _expect(world.upload(bytes(tampered), headers), 401, "bad_signature")
    # B signs, but claims to be A
    foreign = _headers(world.key_b, "POST", world.path, world.assignment.round_id, world.frame)
    foreign["x-plume-device"] = headers["x-plume-device"]
    _expect(world.upload(world.frame, {**foreign, "idempotency-key": "k"}), 401, "bad_signature")
    stale = world.signed_upload(world.frame, ts=int(time.time() * 1000) - 3_600_000)
    _expect(world.upload(world.frame, stale), 401, "stale_timestamp")
    # Signed for another path (round 2) and replayed against this one
    other = _headers(
        world.key_a, "POST", "/v1/rounds/2/updates", world.assignment.round_id, world.frame
    )
    _expect(world.upload(world.frame, {**other, "idempotency-key": "k"}), 401, "bad_signature")
    assert world.state() == before


def test_replayed_request_is_401(world: World) -> None:
    body = b"{}"
    h = _headers(world.key_b, "POST", "/v1/checkin", 0, body)
    h["content-type"] = "application/json"
    first = world.http.post("/v1/checkin", content=body, headers=h)
    assert first.status_code == 200
    _expect(world.http.post("/v1/checkin", content=body, headers=h), 401, "replayed_nonce")


def test_not_selected_and_round_mismatch_are_403(world: World) -> None:
    before = world.state()
    hb = _headers(world.key_b, "POST", world.path, world.assignment.round_id, world.frame)
    _expect(world.upload(world.frame, {**hb, "idempotency-key": "k"}), 403, "not_selected")
    h = _headers(world.key_a, "POST", world.path, world.assignment.round_id + 1, world.frame)
    _expect(world.upload(world.frame, {**h, "idempotency-key": "k"}), 403, "round_mismatch")
    assert world.state() == before


def test_oversized_bodies_are_413(world: World) -> None:
    before = world.state()
    big = b"\x00" * (world.assignment.max_upload_bytes + 1)
    _expect(world.upload(big, world.signed_upload(big)), 413, "too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is enforced while streaming
        for _ in range(world.assignment.max_upload_bytes // 1024 + 2):
            yield b"\x00" * 1024

    streamed = world.http.post(
        world.path,
        content=chunks(),
        headers={**world.signed_upload(b"x"), "content-type": "application/octet-stream"},
    )
    _expect(streamed, 413, "too_large")
    huge_json = b'{"task_id": 1, "pad": "' + b"x" * 70_000 + b'"}'
    h = _headers(world.key_a, "POST", "/v1/checkin", 0, huge_json)
    resp = world.http.post(
        "/v1/checkin", content=huge_json, headers={**h, "content-type": "application/json"}
    )
    _expect(resp, 413, "too_large")
    assert world.state() == before


def test_malformed_requests_are_400_or_422(world: World) -> None:
    before = world.state()
    garbage = b"PLUMEnot-a-frame" * 4
    _expect(world.upload(garbage, world.signed_upload(garbage)), 422, "bad_frame")
    no_key = _headers(world.key_a, "POST", world.path, world.assignment.round_id, world.frame)
    _expect(world.upload(world.frame, no_key), 400, "malformed")
    bad_json = b'{"task_id": '
    h = _headers(world.key_a, "POST", "/v1/checkin", 0, bad_json)
    resp = world.http.post(
        "/v1/checkin", content=bad_json, headers={**h, "content-type": "application/json"}
    )
    _expect(resp, 422, "validation")
    unknown = "/v1/rounds/999/updates"
    h = _headers(world.key_a, "POST", unknown, 999, world.frame)
    _expect(world.upload(world.frame, {**h, "idempotency-key": "k"}, unknown), 404, "unknown_round")
    assert world.state() == before


def test_admin_endpoints_need_the_token(world: World) -> None:
    r = world.http.post("/v1/admin/tasks/1/pause")
    _expect(r, 401, "bad_admin_token")
    r = world.http.post("/v1/admin/tasks/1/pause", headers={"authorization": "Bearer nope"})
    _expect(r, 403, "bad_admin_token")
    r = world.http.get(f"/v1/rounds/{world.assignment.round_id}")
    _expect(r, 401, "unsigned")


def test_legit_upload_after_all_attacks_then_duplicate_is_409(world: World) -> None:
    # Prepare: nothing accepted so far, model untouched
    reports, digest, version = world.state()
    assert (reports, version) == (0, 0)
    # Execute
    ok = world.upload(world.frame, world.signed_upload(world.frame))
    params, _ = world.a.fetch_model(world.assignment)
    other = world.a._core.encode(world.assignment, SPEC, params, params - 0.05, 40).frame
    again = world.upload(other, {**world.signed_upload(other), "idempotency-key": "k-2"})
    # the same bytes under another key are the stored upload: its receipt again, not counted
    same = world.upload(world.frame, {**world.signed_upload(world.frame), "idempotency-key": "k-3"})
    # Assert
    assert ok.status_code == 200 and ok.json()["reports"] == 1
    _expect(again, 409, "duplicate_upload")
    assert same.status_code == 200 and same.json()["duplicate"] is True, same.text
    assert same.json()["reports"] == 1
