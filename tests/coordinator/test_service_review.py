"""Adversarial review of the coordinator service: requests found to crash or mislead it stay fixed."""

from __future__ import annotations

import http.client as httpclient
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from compression import CodecConfig, ErrorFeedback, UpdateCodec
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import Assignment
from sdk.client import Client

from ..compression._craft import with_field
from .test_service_support import (
    ADMIN,
    SPEC,
    admin_get,
    await_assignment,
    create_task,
    signed_headers,
    task_config,
    task_server,
    wait_until,
)

_TOO_BIG = 2**63  # one past SQLite's largest INTEGER


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("review")) as client:
        yield client


_ID_ROUTES = [
    ("GET", "/v1/rounds/{}"),
    ("GET", "/v1/rounds/{}/bandwidth"),
    ("POST", "/v1/rounds/{}/updates"),
    ("GET", "/v1/secure/rounds/{}/result"),
    ("GET", "/v1/admin/tasks/{}"),
    ("GET", "/v1/admin/tasks/{}/rounds"),
    ("POST", "/v1/admin/tasks/{}/pause"),
    ("POST", "/v1/admin/tasks/{}/resume"),
    ("PUT", "/v1/admin/tasks/{}/model"),
    ("GET", "/v1/tasks/{}/model"),
]


# Both ends: one past the largest INTEGER, and one below the smallest (-2^63 - 1 overflowed
# the store's query as a 500 until a schemathesis sweep found it).
@pytest.mark.parametrize(
    ("method", "path"),
    [(m, p.format(i)) for i in (_TOO_BIG, -_TOO_BIG - 1) for m, p in _ID_ROUTES],
)
def test_ids_beyond_sqlite_integers_are_4xx_not_500(
    http: httpx.Client, method: str, path: str
) -> None:
    # Prepare: admin credentials, so the id is what gets judged (unsigned device routes may
    # answer 401 first, which is just as fine)
    headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/octet-stream"}
    # Execute
    r = http.request(method, path, headers=headers, content=b"x" if method != "GET" else None)
    # Assert: a refusal with a reason, and the service still answers
    assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
    assert r.json()["reason"], r.text
    assert http.get("/healthz").json()["ok"] is True


def test_largest_sqlite_id_is_an_ordinary_404(http: httpx.Client) -> None:
    r = http.get(f"/v1/rounds/{_TOO_BIG - 1}", headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 404 and r.json()["reason"] == "unknown_round", r.text


def test_empty_admin_token_disables_the_admin_api(tmp_path: Path) -> None:
    # Prepare: a token set but empty (`PLUME_ADMIN_TOKEN=` in an env file) must not mean
    # "the empty string is the password"
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token="")
    task = {"name": "x", "model_name": "m", "spec": [{"name": "w", "shape": [4]}], "rounds": 1}
    body = json.dumps({**task, "clients_per_round": 1})
    with ServerThread(cfg) as url:
        # Execute: http.client, because httpx (h11) will not send a header value ending in a
        # space, while curl and other clients do
        parts = urlsplit(url)
        conn = httpclient.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        headers = {"Authorization": "Bearer ", "Content-Type": "application/json"}
        conn.request("POST", "/v1/admin/tasks", body=body, headers=headers)
        r = conn.getresponse()
        status, answer = r.status, json.loads(r.read())
        conn.close()
    # Assert: refused as "admin API disabled"
    assert status == 403 and answer["reason"] == "bad_admin_token", answer
    assert "disabled" in answer["detail"]


def test_plain_upload_into_a_secure_round_is_refused(tmp_path: Path) -> None:
    # Prepare: a secure task whose first round has selected three devices
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    task = task_config(
        rounds=1, clients_per_round=3, secure={"coord_fraction": 0.1, "stage_timeout_s": 30}
    )
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as client:
        task_id = create_task(client, task)
        devices = [Client(url, str(tmp_path / f"d{i}")) for i in range(3)]
        for d in devices:
            d.register()
            d.check_in(task_id)
        assignment = await_assignment(devices[0], task_id)
        assert assignment is not None and assignment.secure
        rid = assignment.round_id
        # A plaintext frame, unclipped, that the SecAgg path would never let through
        codec = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=32))
        frame, _ = ErrorFeedback(SPEC.size).step(
            np.full(SPEC.size, 5.0, np.float32), codec, np.random.default_rng(0), weight=10.0
        )
        # Execute
        r = _post_upload(client, devices[0], rid, frame, "k")
        status = admin_get(client, f"/v1/rounds/{rid}")
        for d in devices:
            d.close()
    # Assert: refused with a reason; the round holds nothing and is still open
    assert r.status_code == 409 and r.json()["reason"] == "invalid_state", r.text
    assert "secure" in r.json()["detail"]
    assert (status["state"], status["reports"]) == ("open", 0)


def _post_upload(
    http: httpx.Client, client: Client, round_id: int, body: bytes, key: str
) -> httpx.Response:
    """POST `body` to round `round_id`'s upload path, signed by `client`, under `key`."""
    path = f"/v1/rounds/{round_id}/updates"
    headers = signed_headers(client._core.key, "POST", path, round_id, body)
    headers.update({"idempotency-key": key, "content-type": "application/octet-stream"})
    return http.post(path, content=body, headers=headers)


def _one_report_round(
    http: httpx.Client, tmp_path: Path
) -> tuple[int, Client, Assignment, npt.NDArray[np.float32], bytes]:
    """A one-report task; device A registered and assigned to its round; the round's model and
    A's valid frame (model + 0.05)."""
    task_id = create_task(http, task_config(rounds=1, clients_per_round=1, deadline_s=60.0))
    a = Client(str(http.base_url).rstrip("/"), str(tmp_path / "a"))
    a.register()
    assignment = a.check_in(task_id).assignment
    assert assignment is not None
    params, _ = a.fetch_model(assignment)
    frame = a._core.encode(assignment, SPEC, params, params + 0.05, 40).frame
    return task_id, a, assignment, params, frame


def _signed_get(client: Client, path: str, round_id: int) -> dict[str, str]:
    return signed_headers(client._core.key, "GET", path, round_id)


def test_only_a_rounds_devices_add_to_its_ledger(http: httpx.Client, tmp_path: Path) -> None:
    # Prepare: a round with device A selected; B registered but in no round
    task_id = create_task(http, task_config(rounds=1, clients_per_round=1))
    url = str(http.base_url).rstrip("/")
    a, b = Client(url, str(tmp_path / "a")), Client(url, str(tmp_path / "b"))
    a.register()
    b.register()
    assignment = a.check_in(task_id).assignment
    assert assignment is not None
    rid = assignment.round_id
    path = f"/v1/rounds/{rid}"
    # Execute: both sign a status request for that round
    as_a = http.get(path, headers=_signed_get(a, path, rid))
    as_b = http.get(path, headers=_signed_get(b, path, rid))
    ledger = admin_get(http, f"/v1/rounds/{rid}/bandwidth")
    a.close()
    b.close()
    # Assert: A's exchange is in the round's ledger, B's is not (it is control traffic)
    assert as_a.status_code == as_b.status_code == 200
    assert as_a.headers.get("x-plume-ledger-round") == str(rid)
    assert "x-plume-ledger-round" not in as_b.headers
    assert {row["device_id"] for row in ledger["rows"]} == {a.device_id}


def test_chunked_json_body_above_the_cap_is_413(http: httpx.Client, tmp_path: Path) -> None:
    # Prepare: a signed check-in whose body, sent without Content-Length, passes the JSON cap
    url = str(http.base_url).rstrip("/")
    device = Client(url, str(tmp_path / "big"))
    device.register()
    body = b'{"task_id": 1, "pad": "' + b"x" * 100_000 + b'"}'
    headers = signed_headers(device._core.key, "POST", "/v1/checkin", 0, body)
    device.close()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    # Execute
    r = http.post(
        "/v1/checkin", content=chunks(), headers={**headers, "content-type": "application/json"}
    )
    # Assert: the streaming cap answers like the Content-Length one, not "error parsing"
    assert r.status_code == 413 and r.json()["reason"] == "too_large", r.text


def test_idempotency_key_reused_with_other_bytes_is_409(http: httpx.Client, tmp_path: Path) -> None:
    # Prepare: device A's update accepted under key "k"
    _, a, assignment, params, frame = _one_report_round(http, tmp_path)
    other = a._core.encode(assignment, SPEC, params, params - 0.05, 40).frame
    rid = assignment.round_id

    # Execute
    first, retry, changed = [
        _post_upload(http, a, rid, body, "k") for body in (frame, frame, other)
    ]
    a.close()
    # Assert: a true retry gets its receipt; other bytes under the same key are not "accepted"
    assert first.status_code == 200 and not first.json()["duplicate"], first.text
    assert retry.status_code == 200 and retry.json()["duplicate"], retry.text
    assert changed.status_code == 409 and changed.json()["reason"] == "duplicate_upload"


def test_a_weight_that_would_overflow_fedavg_is_refused_and_the_round_still_commits(
    http: httpx.Client, tmp_path: Path
) -> None:
    # Prepare: a one-report round; device A's valid frame with its weight rewritten to 1.7e308
    # (CRC fixed). Before MAX_WEIGHT the upload was accepted, FedAvg overflowed at close and the
    # round was abandoned with every honest update in it.
    task_id, a, assignment, _, frame = _one_report_round(http, tmp_path)
    huge = with_field(frame, "weight", 1.7e308)
    rid = assignment.round_id

    # Execute
    refused = _post_upload(http, a, rid, huge, "huge")
    accepted = _post_upload(http, a, rid, frame, "honest")
    a.close()
    status = wait_until(http, f"/v1/admin/tasks/{task_id}", "version", 1)

    # Assert: a 4xx with the decoder's reason, then the honest update commits the round
    assert refused.status_code == 422 and "weight" in refused.text, refused.text
    assert accepted.status_code == 200, accepted.text
    assert status.get("version") == 1, status


def test_a_known_path_with_the_wrong_method_is_405_method_not_allowed(http: httpx.Client) -> None:
    # Execute: the check-in route only takes POST
    r = http.get("/v1/checkin")
    # Assert: its own reason (it used to say not_found), and the Allow header
    assert r.status_code == 405 and r.json()["reason"] == "method_not_allowed", r.text
    assert "POST" in r.headers.get("allow", "")
