"""Hostile requests to the SecAgg+ stage endpoints of a live coordinator: each gets a 4xx with a
reason and changes nothing, so the honest devices still complete the round afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from protocol import auth
from protocol.messages import Assignment, CodecParams
from protocol.names import Reason
from protocol.secagg import AdvertiseKeys, Stage
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SPEC,
    admin_get,
    create_task,
    signed_headers,
    task_config,
    wait_until,
)

STAGES = [
    str(s) for s in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
]


_signed = signed_headers  # (key, method, target, round_id, body); test_h165_* import it


class World:
    """A secure round of three selected devices (A, B, C) held in its first stage; D is
    registered but not selected."""

    def __init__(self, url: str, root: Path) -> None:
        self.http = httpx.Client(base_url=url)
        cfg = task_config(
            rounds=1, clients_per_round=3, over_selection=1.0, min_reports=3,
            selection_timeout_s=60.0, deadline_s=120.0,
            downlink=CodecParams(topk=1.0, bits=32),
            secure={"coord_fraction": 0.5, "stage_timeout_s": 100.0},
        )  # fmt: skip
        self.task_id = create_task(self.http, cfg)
        self.clients = [Client(url, str(root / f"dev{i}")) for i in range(3)]
        for c in self.clients:
            c.register()
        self.a = self.clients[0]
        answers: dict[str, Assignment] = {}
        for c in self.clients:
            answer = c.check_in(self.task_id)
            if answer.assignment is not None:
                answers[c.device_id] = answer.assignment
        for c in self.clients:
            while c.device_id not in answers:
                answer = c.check_in(self.task_id)
                if answer.assignment is not None:
                    answers[c.device_id] = answer.assignment
                time.sleep(0.02)
        self.assignments = answers
        self.round_id = answers[self.a.device_id].round_id
        self.d = Client(url, str(root / "outsider"))
        self.d.register()
        self.key_a = self.a._core.key

    def path(self, stage: str) -> str:
        return f"/v1/secure/rounds/{self.round_id}/stages/{stage}"

    def post(self, stage: str, body: bytes, key: bytes | None = None, round_id: int | None = None,
             path: str | None = None) -> httpx.Response:  # fmt: skip
        target = path or self.path(stage)
        rid = self.round_id if round_id is None else round_id
        headers = _signed(key or self.key_a, "POST", target, rid, body)
        return self.http.post(
            target, content=body, headers={"content-type": "application/octet-stream", **headers}
        )

    def uploads(self) -> dict[str, int]:
        status = admin_get(self.http, f"/v1/rounds/{self.round_id}")
        assert status["state"] == "open"
        counts: dict[str, int] = status["measurements"]["stage_uploads"]
        return counts

    def valid_advertise(self, node: int = 0) -> bytes:
        return AdvertiseKeys(self.round_id, node, b"\x01" * 32, b"\x02" * 32).to_bytes()

    def close(self) -> None:
        for c in (*self.clients, self.d):
            c.close()
        self.http.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("secure-security")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02)
    with ServerThread(cfg) as url:
        w = World(url, root)
        yield w
        w.close()


def _refused(r: httpx.Response, status: int, reason: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["reason"] == reason and body["detail"]
    return str(body["detail"])


NOTHING = dict.fromkeys(STAGES, 0)
OCTET = {"content-type": "application/octet-stream"}  # stage bodies must say so (else 415)


def test_unauthenticated_and_misaddressed_stage_requests(world: World) -> None:
    # Prepare
    body = world.valid_advertise()
    path = world.path("advertise-keys")
    # Execute + Assert: unsigned, unregistered, tampered, wrong round, outsider, unknown round
    r = world.http.post(path, content=body, headers=OCTET)
    _refused(r, 401, Reason.UNSIGNED)
    stranger = auth.generate_private_key()
    _refused(world.post("advertise-keys", body, key=stranger), 401, Reason.UNREGISTERED)
    headers = _signed(world.key_a, "POST", path, world.round_id, body)
    r = world.http.post(path, content=body + b"x", headers={**headers, **OCTET})
    _refused(r, 401, Reason.BAD_SIGNATURE)
    _refused(world.post("advertise-keys", body, round_id=0), 403, Reason.ROUND_MISMATCH)
    _refused(world.post("advertise-keys", body, key=world.d._core.key), 403, Reason.NOT_SELECTED)
    missing = "/v1/secure/rounds/999/stages/advertise-keys"
    r = world.post("advertise-keys", body, round_id=999, path=missing)
    _refused(r, 404, Reason.UNKNOWN_ROUND)
    _refused(world.post("finished", body), 422, Reason.VALIDATION)
    _refused(world.post("done", body), 422, Reason.VALIDATION)
    # A replayed request (same nonce) is refused even though its signature verifies
    junk = b"\x00" * 10
    headers = {**_signed(world.key_a, "POST", path, world.round_id, junk), **OCTET}
    _refused(world.http.post(path, content=junk, headers=headers), 422, Reason.BAD_FRAME)
    _refused(world.http.post(path, content=junk, headers=headers), 401, Reason.REPLAYED_NONCE)
    assert world.uploads() == NOTHING


def test_malformed_oversized_and_out_of_order_stage_bodies(world: World) -> None:
    # Prepare
    good = world.valid_advertise()
    # Execute + Assert
    detail = _refused(world.post("advertise-keys", good[:-1]), 422, Reason.BAD_FRAME)
    assert detail.startswith("MalformedMessage")
    assert world.assignments[world.a.device_id].secure
    # A's message claiming another node's place in the graph
    r = world.post("advertise-keys", world.valid_advertise((_node(world) + 1) % 3))
    assert _refused(r, 422, Reason.BAD_FRAME).startswith("ProtocolViolation")
    _refused(world.post("advertise-keys", b"\x00" * 100_000), 413, Reason.TOO_LARGE)
    # a stage not open yet: 409 whatever the body (before stop 46 a malformed one was 422)
    r = world.post("share-keys", b"PSA1" + b"\x00" * 30)
    assert _refused(r, 409, Reason.INVALID_STATE).startswith("WrongStage")
    # The download that follows a stage is not ready while the stage is open
    target = world.path("advertise-keys")
    r = world.http.get(target, headers=_signed(world.key_a, "GET", target, world.round_id, b""))
    assert r.status_code == 425 and float(r.headers["retry-after"]) > 0
    assert r.json()["reason"] == Reason.INVALID_STATE
    assert world.uploads() == NOTHING


def _node(world: World) -> int:
    target = f"/v1/secure/rounds/{world.round_id}/setup"
    r = world.http.get(target, headers=_signed(world.key_a, "GET", target, world.round_id, b""))
    assert r.status_code == 200
    return int(r.headers["x-plume-secagg-node"])


def _mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    header = st.tuples(st.integers(0, 16), st.integers(1, 255)).map(
        lambda iv: valid[: iv[0]] + bytes([valid[iv[0]] ^ iv[1]]) + valid[iv[0] + 1 :]
    )
    return st.one_of(
        st.binary(max_size=300).filter(lambda b: len(b) != len(valid)),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.binary(min_size=1, max_size=40).map(lambda tail: valid + tail),
        header,
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_property_refused_stage_bodies_change_nothing(world: World, data: st.DataObject) -> None:
    # Prepare: a stage and a body that is not a well-formed message from A for that stage
    node = _node(world)
    valid = world.valid_advertise(node)
    stage = data.draw(st.sampled_from(STAGES))
    body = data.draw(_mutated(valid) if stage == "advertise-keys" else st.binary(max_size=400))
    # Execute
    r = world.post(stage, body)
    # Assert: a 4xx with a machine-readable reason, and the round holds no upload
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["reason"] in {str(x) for x in Reason}
    assert world.uploads() == NOTHING


def test_zz_honest_devices_finish_after_the_attacks(world: World) -> None:
    # Execute: the three selected devices run the whole protocol (A's retry of an identical
    # upload is idempotent)
    reports = {}

    def run(c: Client) -> None:
        a = world.assignments[c.device_id]
        reports[c.device_id] = c.secure_round(
            a, lambda params: (np.full(SPEC.size, 0.01, np.float32), 1, 0.0)
        )

    threads = [threading.Thread(target=run, args=(c,)) for c in world.clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    status = wait_until(world.http, f"/v1/admin/tasks/{world.task_id}", "version", 1)
    # Assert
    assert status["version"] == 1 and all(r.completed for r in reports.values())
    rnd = admin_get(world.http, f"/v1/rounds/{world.round_id}")
    assert rnd["state"] == "committed" and rnd["measurements"]["contributors"] == 3
    # After commit, stage requests are refused as closed
    r = world.post("unmask", b"\x00")
    _refused(r, 409, Reason.ROUND_CLOSED)
