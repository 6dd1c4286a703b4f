"""Refusals docs/http-api.md documents that no test sent before helper-57d's audit, each against
a live coordinator, with the state checked unchanged after it: a device's model download of a
task still awaiting its model, an export chain longer than the cap, and a query value outside a
route's choices (`format`, `dtype`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from compression import encode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service import rounds as rounds_module
from protocol.messages import to_json

from .test_h79_admin_model import World as ExportWorld
from .test_h79_admin_model import _history, world  # noqa: F401  (the fixture)
from .test_service_security import World, running_world
from .test_service_support import (
    ADMIN,
    SPEC,
    admin_get,
    device_client,
    initial_params,
    send_signed,
    task_config,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}


def _refused(r: httpx.Response, status: int, reason: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["reason"] == reason, body
    return str(body["detail"])


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("s57d-routes")) as w:
        yield w


def test_a_download_of_a_task_awaiting_its_model_is_404_and_the_task_still_waits(
    tmp_path: Path,
) -> None:
    # Prepare: a task created without its model, and a registered device
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        r = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH)
        task_id = r.json()["task_id"]
        device = device_client(url, str(tmp_path / "dev"))
        device.register()
        # Execute
        got = send_signed(http, device, "GET", f"/v1/tasks/{task_id}/model", 0)
        status = admin_get(http, f"/v1/admin/tasks/{task_id}")
        put = http.put(
            f"/v1/admin/tasks/{task_id}/model",
            content=encode_snapshot(initial_params(), SPEC, "fp32"),
            headers={**AUTH, "content-type": "application/octet-stream"},
        )
    # Assert: the doc's 404 and detail; the task still awaits its model, which it then takes
    assert _refused(got, 404, "unknown_task") == f"no task {task_id} with a model"
    assert status["state"] == "awaiting_model" and status["model_digest"] == ""
    assert put.status_code == 200 and put.json()["state"] == "active"


def test_an_export_chain_longer_than_the_cap_is_422_and_a_shorter_one_is_served(
    world: ExportWorld,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a task that published versions 1 and 2, and the cap (1,024) lowered to 1
    task_id, _ = _history(world, 2)
    before = admin_get(world.http, f"/v1/admin/tasks/{task_id}")
    monkeypatch.setattr(rounds_module, "MAX_EXPORT_CHAIN", 1)
    path = f"/v1/admin/tasks/{task_id}/model"
    # Execute
    refused = world.http.get(path, params={"version": 2, "base": 0}, headers=AUTH)
    step = world.http.get(path, params={"version": 2, "base": 1}, headers=AUTH)
    after = admin_get(world.http, f"/v1/admin/tasks/{task_id}")
    # Assert: "more than 1,024 versions apart, is 422 validation" (at the lowered cap)
    detail = _refused(refused, 422, "validation")
    assert detail.startswith("a chain of 2 versions; at most 1 a request")
    assert step.status_code == 200, step.text
    assert step.headers["x-plume-model-encoding"] == "delta-chain"
    assert step.headers["x-plume-model-base-version"] == "1"
    assert (after["version"], after["model_digest"]) == (before["version"], before["model_digest"])


@pytest.mark.parametrize(
    ("route", "query", "detail"),
    [
        ("bandwidth", {"format": "xml"}, "query.format: String should match pattern"),
        ("model", {"format": "bogus"}, "query.format: String should match pattern"),
        ("model", {"dtype": "fp8"}, "query.dtype: Input should be 'fp32' or 'fp16'"),
    ],
)
def test_a_query_value_outside_the_routes_choices_is_422_naming_it(
    plain: World, route: str, query: dict[str, str], detail: str
) -> None:
    # Prepare: the selected device, signed for its round
    w = plain
    rid = w.assignment.round_id
    path = f"/v1/rounds/{rid}/bandwidth" if route == "bandwidth" else f"/v1/tasks/{w.task_id}/model"
    before = w.state()
    # Execute
    r = send_signed(w.http, w.a, "GET", path, rid, params=query)
    # Assert
    assert _refused(r, 422, "validation").startswith(detail)
    assert w.state() == before


def test_an_upload_of_exactly_the_cap_is_read_and_one_byte_more_is_413(plain: World) -> None:
    # Prepare: bodies of the round's max_upload_bytes and one byte more ("body above the cap")
    w = plain
    cap = w.assignment.max_upload_bytes
    at, over = b"\x00" * cap, b"\x00" * (cap + 1)
    before = w.state()
    # Execute
    read = w.upload(at, w.signed_upload(at))
    refused = w.upload(over, w.signed_upload(over))
    # Assert: the one at the cap is read and decoded (and refused as no frame), the other not
    assert _refused(read, 422, "bad_frame")
    assert _refused(refused, 413, "too_large") == f"update above the {cap}-byte cap"
    assert refused.headers["connection"] == "close"
    assert w.state() == before
