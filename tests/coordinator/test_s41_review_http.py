"""Helper-330's review of the coordinator's HTTP handling, through a real server on loopback:

- F1: a JSON string with an unpaired surrogate escape (`"\\ud800"`) in a task config was
  stored (201), then every answer that wrote it out failed: 500 on the task listing, on the
  task's status and on its devices' check-ins. Now any JSON body holding one is 422
  `validation`, on every JSON route, and nothing is stored.
- F2: `secure.degree_factor` 1e308 overflowed the degree arithmetic (500); it now gives the
  complete graph, as any factor past n does.
- F3: a secure task with a cohort above what one SecAgg instance holds planned every round size
  first (39 s on the event loop, every request stalled) before it was refused; it is refused
  at once now, naming `secure.group_size`.
- F4: Starlette routed the percent-decoded path, so `/%6detrics` answered as `/metrics` and
  `/v1/admin/tasks/%31` as task 1; a path is routed as written now.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import coordinator.service.secure as service_secure
from coordinator.secure import make_plan
from protocol import auth
from protocol.messages import to_json
from protocol.names import Reason
from protocol.secagg import SecurePlan

from .test_service_hardening import _register
from .test_service_support import ADMIN, signed_headers, task_config, task_server

ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("s41")) as client:
        yield client


def _config(**over: object) -> dict[str, object]:
    doc = to_json(task_config())
    assert isinstance(doc, dict)
    return {**doc, **over}


def _create(http: httpx.Client, raw: bytes) -> httpx.Response:
    return http.post("/v1/admin/tasks", content=raw, headers={**ADMIN_AUTH, **JSON})


def _tasks(http: httpx.Client) -> list[object]:
    r = http.get("/v1/admin/tasks", headers=ADMIN_AUTH)
    assert r.status_code == 200, r.text
    tasks = r.json()
    assert isinstance(tasks, list)
    return tasks


def _with_escape(doc: dict[str, object], marker: str, escape: str) -> bytes:
    """`doc` as JSON with the string `marker` replaced by the raw escape text `escape`
    (json.dumps would write a lone surrogate as the same escape; this says it outright)."""
    raw = json.dumps(doc)
    assert raw.count(marker) == 1
    return raw.replace(marker, escape).encode()


@pytest.mark.parametrize(
    "where",
    ["name", "model_name", "spec_name", "secure_key", "aggregator"],
)
@pytest.mark.parametrize("escape", ["\\ud800", "\\uDFFF", "a\\udc00b"])
def test_a_lone_surrogate_in_a_task_config_is_422_and_nothing_is_stored(
    http: httpx.Client, where: str, escape: str
) -> None:
    # Prepare: a config with the marker where the escape goes
    marker = "MARKER_S41"
    doc = _config()
    if where == "spec_name":
        doc["spec"] = [{"name": marker, "shape": [4]}]
    elif where == "secure_key":
        doc["secure"] = {marker: 1}
    else:
        doc[where] = marker
    before = _tasks(http)
    # Execute
    r = _create(http, _with_escape(doc, marker, escape))
    # Assert: refused with the reason, no task added, and the listing still answers
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == Reason.VALIDATION
    assert "unpaired UTF-16 surrogate" in r.json()["detail"]
    assert _tasks(http) == before


@pytest.mark.parametrize(
    "escape, text",
    [
        ("\\ud83d\\ude00", "\U0001f600"),  # a pair: one character, valid Unicode
        ("\\\\ud800", "\\ud800"),  # an escaped backslash, then the letters u d 8 0 0
    ],
)
def test_escapes_that_are_unicode_text_are_still_taken(
    http: httpx.Client, escape: str, text: str
) -> None:
    marker = "MARKER_S41"
    r = _create(http, _with_escape(_config(name=marker), marker, escape))
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    r = http.get(f"/v1/admin/tasks/{task_id}", headers=ADMIN_AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["name"] == text
    assert any(t["config"]["name"] == text for t in _tasks(http) if isinstance(t, dict)), text


def test_a_lone_surrogate_in_a_check_in_is_422_before_its_nonce_is_spent(
    http: httpx.Client,
) -> None:
    # Prepare: a registered device and a check-in whose features hold a lone surrogate
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    body = b'{"task_id": null, "features": ["\\ud800"]}'
    headers = {**signed_headers(key, "POST", "/v1/checkin", 0, body), **JSON}
    # Execute
    r = http.post("/v1/checkin", content=body, headers=headers)
    # Assert: refused for the text; the same signed request is not a replay (nonce unspent),
    # so it is refused for the same reason again
    assert r.status_code == 422, r.text
    assert "unpaired UTF-16 surrogate" in r.json()["detail"]
    again = http.post("/v1/checkin", content=body, headers=headers)
    assert again.status_code == 422 and "surrogate" in again.json()["detail"], again.text


def test_a_huge_degree_factor_gives_the_complete_graph_not_a_500(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: keep the plans the task's creation makes (`_check_plan`, in this process)
    plans: list[SecurePlan] = []

    def recording(*args: Any, **kwargs: Any) -> SecurePlan:
        plan = make_plan(*args, **kwargs)
        plans.append(plan)
        return plan

    monkeypatch.setattr(service_secure, "make_plan", recording)
    service_secure._plan_refusal.cache_clear()  # a remembered check would plan nothing
    # n = 4: 1e308 x log2(4) is past a float (n = 3 stays just inside it)
    doc = _config(clients_per_round=4, min_reports=3, secure={"degree_factor": 1e308})

    # Execute
    r = _create(http, json.dumps(doc).encode())

    # Assert: created, and every planned group is the complete graph, the cohort's included
    assert r.status_code == 201, r.text
    assert 4 in {p.num_nodes for p in plans}, plans
    assert [(p.num_nodes, p.degree) for p in plans] == [
        (p.num_nodes, p.num_nodes - 1) for p in plans
    ]


def test_a_secure_cohort_above_one_instance_is_refused_at_once(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: listing the round sizes is where the 39 s went (1.3 million of them, each then
    # planned); fail loudly if the check gets there
    listed: list[tuple[object, ...]] = []

    def listing(*args: object) -> list[tuple[int, ...]]:
        listed.append(args)
        raise AssertionError("round sizes listed before the refusal")

    monkeypatch.setattr(service_secure, "round_groups", listing)
    service_secure._plan_refusal.cache_clear()
    # 1,000,000 a round x 1.3 over-selection: 1.3 million devices in one SecAgg group
    doc = _config(clients_per_round=1_000_000, over_selection=1.3, secure={})

    # Execute
    r = _create(http, json.dumps(doc).encode())

    # Assert: refused before any round size was listed or planned
    assert listed == []
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "group of 1300000 devices" in detail and "secure.group_size" in detail, detail


@pytest.mark.parametrize(
    "path, status",
    [
        ("/%6detrics", 404),  # was /metrics
        ("/v1/admin%2Ftasks", 404),  # was the task listing
        ("/v1/admin/tasks/%31", 422),  # was task 1: an id written with an escape
        ("/healthz%3F", 404),
    ],
)
def test_a_path_is_routed_as_written(http: httpx.Client, path: str, status: int) -> None:
    r = http.get(path, headers=ADMIN_AUTH)
    assert r.status_code == status, r.text
    if status == 422:
        assert "decimal digits" in r.json()["detail"] and "%31" in r.json()["detail"], r.text
    # and the plain spellings still answer
    assert http.get("/metrics").status_code == 200
    assert http.get("/v1/admin/tasks/1", headers=ADMIN_AUTH).status_code == 200


def test_a_task_name_with_a_lone_surrogate_is_refused_by_the_spec_too(tmp_path: Path) -> None:
    """Not through HTTP: `ModelSpec` itself refuses a name it cannot hash as UTF-8 (its
    fingerprint raised UnicodeEncodeError, a 500 on the model upload)."""
    from compression import ModelSpec

    with pytest.raises(ValueError, match="not Unicode text"):
        ModelSpec.from_json([{"name": "\ud800", "shape": [3]}])


@pytest.mark.parametrize("value", ["1_0", "+1", "01", "4.0", "%201", "-0", "1%09"])
def test_a_number_in_the_query_is_read_as_written_or_refused(
    http: httpx.Client, value: str
) -> None:
    # helper-341: `have=1_0` was read as 10, and the others as the obvious number
    r = http.get(f"/v1/admin/tasks/1/model?version={value}", headers=ADMIN_AUTH)
    assert r.status_code == 422, r.text
    assert "query.version: a number in the query is decimal digits" in r.json()["detail"]
    assert http.get("/v1/admin/tasks/1/model?version=0", headers=ADMIN_AUTH).status_code == 200
