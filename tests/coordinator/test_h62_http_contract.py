"""Rows of docs/http-api.md's error table checked on a loopback coordinator: JSON nested too
deeply to parse is 400 `malformed` (with a reason), invalid JSON 422 `validation`."""

from __future__ import annotations

from pathlib import Path

import httpx

from coordinator.service import ServerThread, ServiceConfig

from .test_service_support import ADMIN

HEADERS = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}


def test_json_too_deep_is_400_malformed_and_invalid_json_422(tmp_path: Path) -> None:
    # Execute
    with (
        ServerThread(ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)) as url,
        httpx.Client(base_url=url) as http,
    ):
        deep = http.post("/v1/admin/tasks", content=b"[" * 5000 + b"]" * 5000, headers=HEADERS)
        invalid = http.post("/v1/admin/tasks", content=b"{", headers=HEADERS)
        tasks = http.get("/v1/admin/tasks", headers=HEADERS).json()
    # Assert: each with its reason and a sentence; nothing created
    assert deep.status_code == 400 and deep.json()["reason"] == "malformed"
    assert invalid.status_code == 422 and invalid.json()["reason"] == "validation"
    assert deep.json()["detail"] and invalid.json()["detail"]
    assert tasks == []
