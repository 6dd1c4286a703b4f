"""A task or round id in a URL path is ASCII decimal digits, no sign, space, point, underscore or
leading zero (helper-228's F3): pydantic's lenient int read `+1`, `1.0` and ` 1` (`%201`) as
id 1, while the wire middleware, reading the id as written, took them for no round. An upload
to `/v1/rounds/+N/updates` was accepted into round N and its bytes left round N's ledger as
control traffic. Now every route with an id refuses those spellings 422 `validation`, the id
named; docs/http-api.md says so. Through a real server on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from compression import CodecConfig, UpdateCodec
from coordinator.service import ServerThread, ServiceConfig
from protocol import auth
from protocol.names import Reason
from sdk.client import Client

from .test_service_hardening import _register
from .test_service_support import (
    ADMIN,
    SPEC,
    create_task,
    signed_headers,
    task_config,
    task_server,
)

ALIASES = ["+1", "1.0", "%201", "1%20", "01", "1_0", "-1", "%EF%BC%91"]  # the last: U+FF11 '1'
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("ids")) as client:
        yield client


def _id_routes(http: httpx.Client) -> list[tuple[str, str]]:
    """Every (method, path template) the served OpenAPI spec lists with a task or round id."""
    spec = http.get("/openapi.json").json()
    out = []
    for path, ops in spec["paths"].items():
        if "{task_id}" in path or "{round_id}" in path:
            out += [(m.upper(), path) for m in ops if m in ("get", "post", "put")]
    return sorted(out)


def test_every_route_with_an_id_is_swept(http: httpx.Client) -> None:
    routes = _id_routes(http)
    assert ("POST", "/v1/rounds/{round_id}/updates") in routes
    assert ("GET", "/v1/secure/rounds/{round_id}/stages/{stage}") in routes
    assert len(routes) >= 14, routes


@pytest.mark.parametrize("alias", ALIASES)
def test_an_id_spelled_other_than_decimal_digits_is_422_on_every_route(
    http: httpx.Client, alias: str
) -> None:
    # Prepare: a registered device signing each request (device routes check the signature
    # first), the admin token (admin routes), a body and its type (upload routes)
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    failures = []
    for method, template in _id_routes(http):
        path = template.format(task_id=alias, round_id=alias, stage="advertise-keys")
        body = b"x" if method != "GET" else b""
        headers = {**signed_headers(key, method, path, 0, body), **ADMIN_AUTH}
        if "/rounds/" in template and "/admin/" not in template:
            headers.pop("authorization")  # device routes (a round's status takes either)
        if body:
            headers["content-type"] = "application/octet-stream"
            headers["idempotency-key"] = "k"
        # Execute
        r = http.request(method, path, content=body or None, headers=headers)
        # Assert: refused, naming the path id as sent
        answer = r.json()
        if not (
            r.status_code == 422
            and answer.get("reason") == Reason.VALIDATION
            and "decimal digits" in answer.get("detail", "")
        ):
            failures.append((method, path, r.status_code, r.text[:200]))
    assert not failures, failures


def test_plain_ids_still_route(http: httpx.Client) -> None:
    assert http.get("/v1/admin/tasks/1", headers=ADMIN_AUTH).status_code == 200
    r = http.get("/v1/admin/tasks/0", headers=ADMIN_AUTH)
    assert r.status_code == 404 and r.json()["reason"] == Reason.UNKNOWN_TASK, r.text
    r = http.get(f"/v1/admin/tasks/{2**63 - 1}", headers=ADMIN_AUTH)
    assert r.status_code == 404 and r.json()["reason"] == Reason.UNKNOWN_TASK, r.text
    r = http.get(f"/v1/admin/tasks/{2**63}", headers=ADMIN_AUTH)
    assert r.status_code == 422 and r.json()["reason"] == Reason.VALIDATION, r.text


def test_an_upload_to_a_plus_spelled_round_is_refused_and_counts_nowhere(tmp_path: Path) -> None:
    """helper-228's repro_ledger_alias.py: the `+N` upload was accepted into round N, its bytes
    not in round N's ledger."""
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        # Prepare: a round of two devices
        task = create_task(
            http, task_config(clients_per_round=2, deadline_s=600, selection_timeout_s=600)
        )
        devs = [Client(url, str(tmp_path / f"d{i}")) for i in range(2)]
        for d in devs:
            d.register()
        rounds: dict[str, int] = {}
        give_up = time.monotonic() + 30
        while len(rounds) < 2 and time.monotonic() < give_up:
            for d in devs:
                if d.device_id not in rounds:
                    a = d.check_in(task)
                    if a.assignment:
                        rounds[d.device_id] = a.assignment.round_id
            time.sleep(0.05)
        assert len(rounds) == 2, rounds
        rid = rounds[devs[0].device_id]
        codec = UpdateCodec(SPEC, CodecConfig(topk=0.25, bits=8))
        rng = np.random.default_rng(0)
        frame, _ = codec.encode(rng.normal(0, 0.01, SPEC.size).astype(np.float32), rng, 40.0)

        def upload(d: Client, path: str) -> httpx.Response:
            sig = signed_headers(d._core.key, "POST", path, rid, frame)
            return http.post(
                path,
                content=frame,
                headers={"content-type": "application/octet-stream", "idempotency-key": "k", **sig},
            )

        # Execute: device 0 uploads to /v1/rounds/+N/updates, then to /v1/rounds/N/updates
        aliased = upload(devs[0], f"/v1/rounds/+{rid}/updates")
        status_after_alias = http.get(f"/v1/rounds/{rid}", headers=ADMIN_AUTH).json()
        plain = upload(devs[0], f"/v1/rounds/{rid}/updates")
        # Assert: the aliased upload is refused and took nothing; the plain one is the round's
        assert aliased.status_code == 422, aliased.text
        assert aliased.json()["reason"] == Reason.VALIDATION
        assert "x-plume-ledger-round" not in aliased.headers
        assert status_after_alias["reports"] == 0, status_after_alias
        assert plain.status_code == 200, plain.text
        assert plain.headers["x-plume-ledger-round"] == str(rid)
        for d in devs:
            d.close()
