"""docs/http-api.md's rule for `PUT /v1/admin/tasks/{id}/model` as a property (helper-57d's
audit): a snapshot the task's spec refuses (mutated, cut short, of another spec, or no snapshot
at all) is a 4xx with a JSON reason (422 `bad_frame`, 413 `too_large`), never a 5xx, and the task
stays `awaiting_model` with no model, so that the real snapshot is then taken."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from compression import CodecError, ModelSpec, decode_snapshot, encode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import to_json
from protocol.names import Reason

from .test_service_support import ADMIN, SPEC, admin_get, initial_params, task_config

ADMIN_H = {"authorization": f"Bearer {ADMIN}"}
PUT_H = {**ADMIN_H, "content-type": "application/octet-stream"}
SNAPSHOTS = {
    "fp32": encode_snapshot(initial_params(), SPEC, "fp32"),
    "fp16": encode_snapshot(initial_params(), SPEC, "fp16"),
    # a snapshot of another layout (one tensor of the same size) and of another size
    "other spec": encode_snapshot(initial_params(), ModelSpec.from_shapes([("w", (170,))]), "fp32"),
    "other size": encode_snapshot(np.zeros(171, np.float32), ModelSpec.from_shapes([("w", (171,))]), "fp32"),
}  # fmt: skip


class Waiting:
    """A coordinator with one task that awaits its initial model."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        r = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=ADMIN_H)
        assert r.status_code == 201, r.text
        self.task_id = int(r.json()["task_id"])
        self.path = f"/v1/admin/tasks/{self.task_id}/model"

    def state(self) -> tuple[str, int, str, int]:
        t = admin_get(self.http, f"/v1/admin/tasks/{self.task_id}")
        return t["state"], t["version"], t["model_digest"], t["rounds_closed"]


@pytest.fixture(scope="module")
def waiting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Waiting]:
    root = tmp_path_factory.mktemp("s57d-model")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        yield Waiting(http)


def _refused(snapshot: bytes) -> bool:
    try:
        params = decode_snapshot(snapshot, SPEC)
    except CodecError:
        return True
    return not bool(np.all(np.isfinite(params)))


@st.composite
def _snapshots(draw: st.DrawFn) -> bytes:
    """One of SNAPSHOTS with one mutation: a bit flipped, cut short, bytes inserted, a header
    field set to an extreme value, or bytes of no snapshot at all."""
    snap = SNAPSHOTS[draw(st.sampled_from(sorted(SNAPSHOTS)))]
    n = len(snap)
    kind = draw(st.sampled_from(["none", "flip", "cut", "insert", "field", "random"]))
    if kind == "flip":
        i, bit = draw(st.integers(0, n - 1)), draw(st.integers(0, 7))
        return snap[:i] + bytes([snap[i] ^ (1 << bit)]) + snap[i + 1 :]
    if kind == "cut":
        return snap[: draw(st.integers(0, n - 1))]
    if kind == "insert":
        i = draw(st.integers(0, n))
        return snap[:i] + draw(st.binary(min_size=1, max_size=64)) + snap[i:]
    if kind == "field":
        width = draw(st.sampled_from([1, 2, 4, 8]))
        i = draw(st.integers(0, min(80, n - width)))
        value = draw(st.sampled_from([0, 1, 2 ** (8 * width) - 1]))
        return snap[:i] + value.to_bytes(width, "little") + snap[i + width :]
    if kind == "random":
        return draw(st.binary(max_size=2 * n))
    return snap


@settings(
    max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(snapshot=_snapshots())
def test_a_refused_initial_model_is_a_4xx_and_the_task_still_waits(
    waiting: Waiting, snapshot: bytes
) -> None:
    # Prepare: a body the task's spec refuses
    assume(_refused(snapshot))
    before = waiting.state()
    # Execute
    r = waiting.http.put(waiting.path, content=snapshot, headers=PUT_H)
    # Assert
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    event(f"{r.status_code} {body['reason']}")
    assert body["reason"] in set(Reason) and body["detail"], body
    assert waiting.state() == before
    assert before[0] == "awaiting_model"


def test_the_task_then_takes_its_real_initial_model(waiting: Waiting) -> None:
    # Execute
    r = waiting.http.put(waiting.path, content=SNAPSHOTS["fp32"], headers=PUT_H)
    # Assert
    assert r.status_code == 200, r.text
    assert waiting.state()[:2] == ("active", 0)
