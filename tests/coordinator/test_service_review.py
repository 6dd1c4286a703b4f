"""Adversarial review of the coordinator service: requests found to crash or mislead it stay fixed."""

from __future__ import annotations

import http.client as httpclient
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig

from .test_service_support import ADMIN, create_task

_TOO_BIG = 2**63  # one past SQLite's largest INTEGER


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root: Path = tmp_path_factory.mktemp("review")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as client:
        create_task(client)
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v1/rounds/{_TOO_BIG}"),
        ("GET", f"/v1/rounds/{_TOO_BIG}/bandwidth"),
        ("POST", f"/v1/rounds/{_TOO_BIG}/updates"),
        ("GET", f"/v1/secure/rounds/{_TOO_BIG}/result"),
        ("GET", f"/v1/admin/tasks/{_TOO_BIG}"),
        ("GET", f"/v1/admin/tasks/{_TOO_BIG}/rounds"),
        ("POST", f"/v1/admin/tasks/{_TOO_BIG}/pause"),
        ("POST", f"/v1/admin/tasks/{_TOO_BIG}/resume"),
        ("PUT", f"/v1/admin/tasks/{_TOO_BIG}/model"),
        ("GET", f"/v1/tasks/{_TOO_BIG}/model"),
    ],
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
