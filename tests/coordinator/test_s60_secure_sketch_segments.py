"""A secure task whose sketch would need more segments than a plan may carry is refused at
creation.

The secure coordinator's energy sketch (`secure.sketch`, on by default, off under DP) has one
segment per non-empty tensor, and a plan declaring more than `MAX_SEGMENTS` (4,096) is refused
by every device (`SecurePlan.from_bytes`), and since 84a64894 by `SecurePlan` itself. Task
creation took specs of up to 10,000 tensors, so a secure task on a model of 4,097 or more was
created (given a `json_body_cap` above the default 64 KiB, which such a spec's JSON needs)
and then could not open a single round. It is now a 422 naming the count and the fix,
and nothing is created.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import TensorShape, to_json
from protocol.secagg import MAX_SEGMENTS

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root: Path = tmp_path_factory.mktemp("s60_sketch_segments")
    # A spec of 4,097 tensors is about 100 KB of JSON: above the default 64 KiB body cap,
    # which a coordinator serving large models raises.
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, json_body_cap=1 << 20)
    with ServerThread(cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def _body(tensors: int, empty: int = 0, **secure: Any) -> dict[str, Any]:
    spec = [TensorShape(f"t{i}", [2]) for i in range(tensors)]
    spec += [TensorShape(f"e{i}", [0]) for i in range(empty)]
    body = to_json(task_config(clients_per_round=3, spec=spec))
    body["secure"] = secure
    return body


def _tasks(http: httpx.Client) -> Any:
    r = http.get("/v1/admin/tasks", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_sketch_of_more_segments_than_a_plan_carries_is_refused(http: httpx.Client) -> None:
    # Prepare
    before = _tasks(http)
    # Execute
    r = http.post("/v1/admin/tasks", json=_body(MAX_SEGMENTS + 1), headers=AUTH)
    # Assert
    assert r.status_code == 422, r.text
    assert r.json() == {
        "reason": "validation",
        "detail": (
            f"secure.sketch: the model has {MAX_SEGMENTS + 1} non-empty tensors, and a secure "
            f"round's plan carries at most {MAX_SEGMENTS} sketch segments (one a tensor): set "
            "secure.sketch to false"
        ),
    }
    assert _tasks(http) == before


@pytest.mark.parametrize(
    ("tensors", "empty", "secure"),
    [
        (MAX_SEGMENTS, 3, {}),  # at the limit; empty tensors have no segment
        (MAX_SEGMENTS + 1, 0, {"sketch": False}),
        (MAX_SEGMENTS + 1, 0, {"noise": "discrete_gaussian", "noise_multiplier": 1.0}),  # DP
    ],
)
def test_a_sketch_within_the_limit_or_off_is_created(
    http: httpx.Client, tensors: int, empty: int, secure: dict[str, Any]
) -> None:
    r = http.post("/v1/admin/tasks", json=_body(tensors, empty, **secure), headers=AUTH)
    assert r.status_code == 201, r.text
