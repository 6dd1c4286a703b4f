"""A task config whose number is beyond float's range is a 422 naming it, never a 500.

JSON integers have no size limit (up to Python's 4,300 digits), and `math.isfinite` of one
past float's range raises `OverflowError` instead of answering: `POST /v1/admin/tasks` with
`"secure": {"clip_norm": 10**400}` (any numeric secure key) and with `aggregator:
"nnm:f=1e308+median"` (2f leaves float's range in the cohort check) were 500
`internal_error`. Both are now 422 `validation`, and nothing is created."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import to_json

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
# The secure keys `parse_secure` reads as numbers (SecureConfig's float fields and the stage
# timing): each went through the same `_number`.
FLOAT_KEYS = [
    "coord_fraction",
    "clip_norm",
    "degree_factor",
    "noise_multiplier",
    "epsilon_budget",
    "stage_timeout_s",
    "stage_idle_s",
    "dp_delta",
    "expected_dropout",
]


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root: Path = tmp_path_factory.mktemp("s52a_overflow")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def _create(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return http.post("/v1/admin/tasks", json=body, headers=AUTH)


def _tasks(http: httpx.Client) -> Any:
    r = http.get("/v1/admin/tasks", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    key=st.sampled_from(FLOAT_KEYS),
    # Past float's largest (about 1.8e308, 2**1024) up to the 4,300 digits the parser takes.
    value=st.integers(min_value=2**1024, max_value=10**4000),
    negative=st.booleans(),
)
def test_a_secure_number_beyond_float_range_is_422_naming_the_key(
    http: httpx.Client, key: str, value: int, negative: bool
) -> None:
    # Prepare
    before = _tasks(http)
    body = to_json(task_config(clients_per_round=3))
    body["secure"] = {key: -value if negative else value}
    # Execute
    r = _create(http, body)
    # Assert
    assert r.status_code == 422, r.text
    assert r.json() == {
        "reason": "validation",
        "detail": f"secure.{key} must be a finite number",
    }
    assert _tasks(http) == before


@pytest.mark.parametrize(
    "spec", ["nnm:f=1e308+median", "nnm:f=1e308+multikrum", "krum:f=1e308", "multikrum:f=1e308"]
)
def test_an_aggregator_count_beyond_float_range_is_422(http: httpx.Client, spec: str) -> None:
    # Prepare
    before = _tasks(http)
    body = to_json(task_config(clients_per_round=20, aggregator=spec))
    # Execute
    r = _create(http, body)
    # Assert
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "validation"
    # The cohort check now writes the bound 2f + 2 past float's range readably (s52f: `_num`
    # in coordinator/aggregators/_robust.py), so its own refusal is the detail; the service's
    # OverflowError catch stays behind it.
    assert r.json()["detail"].startswith(f"aggregator: {spec.split(':')[0]}: "), r.text
    assert "f=1e+308 needs more than 2e+308 reports a round" in r.json()["detail"], r.text
    assert _tasks(http) == before


def test_the_largest_finite_values_still_get_their_own_refusals(http: httpx.Client) -> None:
    # A float just inside the range reaches the range checks that follow, as before.
    body = to_json(task_config(clients_per_round=3))
    body["secure"] = {"stage_timeout_s": 1e308}
    r = _create(http, body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "secure.stage_timeout_s must be in (0, 86400]"
    r = _create(http, to_json(task_config(clients_per_round=20, aggregator="krum:f=1e307")))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("aggregator: krum: Krum needs n > 2f + 2"), r.text
