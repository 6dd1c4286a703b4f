"""`POST /v1/admin/tasks` refuses a key that is not a task config field (helper-228's F4): the
parser dropped it, so a misspelled `"aggregater": "median"` created a plain fedavg task without
a word. Now 422 `validation` naming the key and the closest field; keys inside `codec`,
`downlink`, `training` and the `spec` entries too (`secure` had its own check already). What
the repo's own admin client sends (`to_json(TaskConfig)`) is unaffected, and so is a stored
config read back at restart (not parsed by this route). Through a real server on loopback.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.admin_client import AdminClient
from protocol.messages import to_json
from protocol.names import Reason

from .test_service_support import ADMIN, initial_params, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, httpx.Client]]:
    root = tmp_path_factory.mktemp("keys")
    cfg = ServiceConfig(db_path=str(root / "p.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        yield url, http


def _post(http: httpx.Client, doc: dict[str, Any]) -> httpx.Response:
    return http.post("/v1/admin/tasks", json=doc, headers=AUTH)


def _tasks(http: httpx.Client) -> int:
    return len(http.get("/v1/admin/tasks", headers=AUTH).json())


def test_a_misspelled_top_level_key_is_422_with_the_closest_field(
    server: tuple[str, httpx.Client],
) -> None:
    # Prepare
    _, http = server
    before = _tasks(http)
    doc = {**to_json(task_config()), "aggregater": "median"}
    # Execute
    r = _post(http, doc)
    # Assert: refused, naming the key and the field it meant; no task created
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["reason"] == Reason.VALIDATION
    assert "unknown task config key: aggregater (did you mean aggregator?)" in body["detail"]
    assert _tasks(http) == before


@pytest.mark.parametrize(
    ("where", "key", "named"),
    [
        ("codec", "bitz", "codec.bitz (did you mean codec.bits?)"),
        ("downlink", "topkk", "downlink.topkk (did you mean downlink.topk?)"),
        ("training", "epochs", "training.epochs"),
        ("spec", "shap", "spec[0].shap (did you mean spec[0].shape?)"),
    ],
)
def test_a_misspelled_nested_key_is_422(
    server: tuple[str, httpx.Client], where: str, key: str, named: str
) -> None:
    _, http = server
    doc = to_json(task_config())
    target = doc[where][0] if where == "spec" else doc[where]
    target[key] = 1
    r = _post(http, doc)
    assert r.status_code == 422, r.text
    assert named in r.json()["detail"], r.text


def test_several_unknown_keys_are_all_named(server: tuple[str, httpx.Client]) -> None:
    _, http = server
    doc = {**to_json(task_config()), "zzz": 1, "comment": "x", "rounds_": 3}
    r = _post(http, doc)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("unknown task config keys: "), detail
    for key in ("zzz", "comment", "rounds_ (did you mean rounds?)"):
        assert key in detail, detail


def test_the_admin_client_and_a_plain_config_still_create(
    server: tuple[str, httpx.Client],
) -> None:
    url, http = server
    # The repo's own client (what `plume coordinator create-task` uses)
    with AdminClient(url, ADMIN) as admin:
        task_id = admin.create_task(task_config(), initial_params())
    assert http.get(f"/v1/admin/tasks/{task_id}", headers=AUTH).status_code == 200
    # Every field written out, secure included
    doc = to_json(task_config())
    doc["secure"] = None
    doc["codec"]["error_feedback"] = None
    assert _post(http, doc).status_code == 201


def test_a_stored_config_with_an_extra_key_still_restores(tmp_path: Path) -> None:
    """The rule is the route's: a stored config (written by another version, say) is read at
    restart by `from_json`, as before."""
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, AdminClient(url, ADMIN) as admin:
        task_id = admin.create_task(task_config(), initial_params())
    with sqlite3.connect(cfg.db_path) as db:
        (raw,) = db.execute(
            "SELECT config_json FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        stored = json.loads(raw)
        stored["from_a_later_version"] = True
        db.execute(
            "UPDATE tasks SET config_json = ? WHERE task_id = ?", (json.dumps(stored), task_id)
        )
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        status = http.get(f"/v1/admin/tasks/{task_id}", headers=AUTH).json()
    assert status["state"] == "active", status
    assert status.get("refused") is None, status
