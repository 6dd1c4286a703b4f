"""Two leftovers of the coordinator's JSON input strictness (docs/http-api.md, Errors).

Repeated keys: a JSON object that gives a key twice (`{"task_id": 1, "task_id": 2}`) was taken,
every JSON route keeping the last value silently (Python's parser); another parser may keep the
first, and a device's body is signed, so one body could mean two things. Now every JSON route
refuses it, at any depth, with a 422 `validation` naming the key and where, before anything is
verified or stored.

A check-in's `model_version`: parsed laxly by the route's model, so -5, 2^70, `true`, `2.0` and
`"3"` were taken. Now it is a JSON integer in [0, 2^63) or a 422 naming the field.

Against a live loopback coordinator (one for the module: each test leaves it as it found it).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.app import _refuse_repeated_keys
from coordinator.service.errors import ApiError
from protocol.messages import to_json
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    admin_get,
    create_task,
    device_client,
    signed_headers,
    task_config,
)

JSON = "application/json"
AUTH = {"authorization": f"Bearer {ADMIN}"}
# The world's selection timeout and pool ttl: windows that must not expire while the module
# runs, however slow the machine (tests/README.md). The task's selection timeout was
# task_config's 5 s: on a loaded machine the module outlasted it after the device's one
# check-in, the tick opened a round with that device (min_reports 1), so the pool went from 1
# to 0 between a model_version test's two reads. The pool ttl was 60 s, the next to go. A week
# is the longest selection_timeout_s a task takes.
WINDOW_S = 7 * 86400.0


class World:
    """A coordinator with one task, and a registered device whose requests are signed by hand."""

    def __init__(self, server: ServerThread, root: Path) -> None:
        self.url = url = server.url
        self.coordinator = server.app.state.coordinator
        self.root = root
        self.http = httpx.Client(base_url=url)
        self.task_id = create_task(
            self.http, task_config(clients_per_round=2, selection_timeout_s=WINDOW_S)
        )
        self.device = device_client(url, str(root / "d"))
        self.device.register()

    def signed(self, client: Client, path: str, body: bytes) -> httpx.Response:
        headers = signed_headers(client._core.key, "POST", path, 0, body)
        headers["content-type"] = JSON
        return self.http.post(path, content=body, headers=headers)

    def check_in(self, body: bytes) -> httpx.Response:
        return self.signed(self.device, "/v1/checkin", body)

    def pool(self) -> int:
        return int(admin_get(self.http, f"/v1/admin/tasks/{self.task_id}")["pool"])


@contextlib.contextmanager
def serving(root: Path) -> Iterator[World]:
    """A `World` on a loopback coordinator whose database is in `root`."""
    cfg = ServiceConfig(
        db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05, pool_ttl_s=WINDOW_S
    )
    server = ServerThread(cfg)
    with server:
        w = World(server, root)
        try:
            yield w
        finally:
            w.device.close()
            w.http.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with serving(tmp_path_factory.mktemp("s58a")) as w:
        yield w


def _refused(r: httpx.Response, *words: str) -> str:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["reason"] == "validation", body
    for word in words:
        assert word in body["detail"], body
    detail: str = body["detail"]
    return detail


# -- repeated keys -------------------------------------------------------------------------


def test_a_registration_with_a_repeated_key_is_refused_and_nothing_is_stored(
    world: World,
) -> None:
    # Prepare: a new device's key, its registration body with public_key given twice
    device = device_client(world.url, str(world.root / "reg"))
    key = base64.urlsafe_b64encode(device._core.public_key).rstrip(b"=").decode()
    body = f'{{"public_key": "{key}", "public_key": "{key}"}}'.encode()
    # Execute
    r = world.signed(device, "/v1/devices", body)
    # Assert: the refusal names the key and where; the device was not stored (its proper
    # registration afterwards creates it)
    detail = _refused(r, '"public_key"', "2 times", "($)")
    assert detail == (
        'body: the key "public_key" is given 2 times in one JSON object ($); give each key '
        "once: parsers differ on which value a repeated key means"
    )
    ok = world.signed(device, "/v1/devices", f'{{"public_key": "{key}"}}'.encode())
    assert ok.status_code == 200 and ok.json()["created"] is True, ok.text


def test_a_check_in_with_a_repeated_key_is_refused_and_changes_nothing(world: World) -> None:
    # Prepare: the task's pool is empty
    assert world.pool() == 0
    body = f'{{"task_id": {world.task_id}, "task_id": {world.task_id}}}'.encode()
    # Execute
    r = world.check_in(body)
    # Assert: refused; the device did not join the task's pool (a proper check-in does)
    _refused(r, '"task_id"', "2 times", "($)")
    assert world.pool() == 0
    ok = world.check_in(f'{{"task_id": {world.task_id}}}'.encode())
    assert ok.status_code == 200, ok.text
    assert world.pool() == 1


def test_a_check_in_with_a_repeated_key_is_refused_before_its_nonce_is_spent(
    world: World,
) -> None:
    # Prepare: one signed request, whose nonce a verified request would spend
    body = b'{"features": [], "features": []}'
    headers = signed_headers(world.device._core.key, "POST", "/v1/checkin", 0, body)
    headers["content-type"] = JSON
    # Execute: sent twice, as signed
    first = world.http.post("/v1/checkin", content=body, headers=headers)
    second = world.http.post("/v1/checkin", content=body, headers=headers)
    # Assert: both are the 422, not a 401 replayed_nonce the second time
    _refused(first, '"features"')
    _refused(second, '"features"')


@pytest.mark.parametrize(
    ("edit", "where", "key"),
    [
        (lambda t: t.replace('{"name": ', '{"rounds": 9, "name": ', 1), "($)", '"rounds"'),
        (
            lambda t: t.replace('"training": {', '"training": {"lr": 9.0, ', 1),
            "($.training)",
            '"lr"',
        ),
        (
            lambda t: t.replace('"spec": [{', '"spec": [{"name": "x", ', 1),
            "($.spec[0])",
            '"name"',
        ),
    ],
    ids=["top", "nested", "in-array"],
)
def test_a_task_creation_with_a_repeated_key_is_refused_and_no_task_is_made(
    world: World, edit: Any, where: str, key: str
) -> None:
    # Prepare: a valid config's JSON, a key repeated in it
    text = json.dumps(to_json(task_config()))
    repeated = edit(text)
    assert repeated != text
    before = admin_get(world.http, "/v1/admin/tasks")
    # Execute
    r = world.http.post(
        "/v1/admin/tasks", content=repeated.encode(), headers={**AUTH, "content-type": JSON}
    )
    # Assert: refused, naming the key and its object; no task was made
    _refused(r, key, where, "2 times")
    assert admin_get(world.http, "/v1/admin/tasks") == before


def test_the_same_key_in_two_objects_is_not_a_repeat(world: World) -> None:
    # A config names "name" at the top and in each spec entry: taken as before
    r = world.http.post("/v1/admin/tasks", json=to_json(task_config()), headers=AUTH)
    assert r.status_code == 201, r.text


def test_a_long_repeated_key_is_shown_cut() -> None:
    key = "k" * 5000
    with pytest.raises(ApiError) as info:
        _refuse_repeated_keys(
            json.dumps({"a": 1}).replace("{", f'{{"{key}": 1, "{key}": 2, ', 1).encode()
        )
    detail = str(info.value.detail)
    assert '"' + "k" * 79 + "..." in detail and len(detail) < 300


# A JSON value without repeated keys (dicts cannot hold any), and a path into its objects.
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=_values, data=st.data())
def test_a_repeat_anywhere_is_found_and_none_is_invented(value: Any, data: st.DataObject) -> None:
    # Without a repeat: taken
    _refuse_repeated_keys(json.dumps(value).encode())
    # One object's first key written twice (the second time with another value): refused,
    # naming that key
    objects: list[dict[str, Any]] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            objects.append(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    objects = [o for o in objects if o]
    if not objects:
        return
    target = data.draw(st.sampled_from(objects))
    first = next(iter(target))
    marker = "\x00repeat\x00"
    target[marker] = None
    text = json.dumps(value).replace(json.dumps(marker) + ": null", json.dumps(first) + ": [1]", 1)
    with pytest.raises(ApiError) as info:
        _refuse_repeated_keys(text.encode())
    assert info.value.status == 422
    assert f"the key {json.dumps(first)[:80]}" in str(info.value.detail)


# -- the check-in's model_version -----------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "words"),
    [
        ("-5", ("$.model_version = -5 is outside [0, 9223372036854775808)",)),
        (str(2**70), ("$.model_version = 1180591620717411303424 is outside",)),
        (str(2**63), ("is outside [0, 9223372036854775808)",)),
        ("true", ("$.model_version: expected an integer model version, got bool true",)),
        ("2.0", ("expected an integer model version, got float 2.0",)),
        ('"3"', ('expected an integer model version, got str "3"',)),
    ],
)
def test_a_check_in_model_version_out_of_range_or_not_an_integer_is_refused(
    world: World, sent: str, words: tuple[str, ...]
) -> None:
    pool = world.pool()
    r = world.check_in(f'{{"task_id": {world.task_id}, "model_version": {sent}}}'.encode())
    _refused(r, *words)
    assert world.pool() == pool


@pytest.mark.parametrize("sent", ["0", "6", str(2**63 - 1), "null"])
def test_a_check_in_model_version_in_range_is_taken(world: World, sent: str) -> None:
    r = world.check_in(f'{{"model_version": {sent}}}'.encode())
    assert r.status_code == 200, r.text
