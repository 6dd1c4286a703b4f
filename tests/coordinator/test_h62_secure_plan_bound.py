"""A secure task whose rounds would share more coordinates than a device can be sent is
refused (422) at creation, before anything of that size is allocated. Before, `check_plan`
built the test round's coordinate set in full: a spec of 2^31 values with coord_fraction 1
asked for 16 GB of indices (a MemoryError, so a 500, or the machine's memory), and a smaller
one was accepted although its plan exceeds the SDK's secure-message cap."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.rounds import validate_task
from coordinator.service.secure import MAX_SECURE_COORDS, check_plan, parse_secure
from protocol.messages import TensorShape, to_json
from sdk.client import MAX_SECURE_RESPONSE

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}


def _secure_task(size: int, **secure: object) -> object:
    return task_config(
        spec=[TensorShape("w", [size])],
        clients_per_round=3,
        secure={"coord_fraction": 1.0, **secure},
    )


def test_the_bound_keeps_a_plan_within_what_a_device_reads() -> None:
    # 4 bytes a coordinate, plus room for the plan's header and sketch segments
    assert 4 * MAX_SECURE_COORDS + (64 << 10) <= MAX_SECURE_RESPONSE


def test_a_huge_coordinate_set_is_refused_without_allocating_it() -> None:
    # Prepare: 2^31 coordinates (the largest model a spec may declare), all shared
    cfg = _secure_task(2**31)
    tracemalloc.start()
    try:
        # Execute
        with pytest.raises(ValueError, match="coordinates") as refused:
            validate_task(cfg)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Assert: refused by its size, having allocated almost nothing
    assert f"{MAX_SECURE_COORDS:,}" in str(refused.value)
    assert peak < 16 << 20


def test_an_upload_budget_that_buys_too_many_coordinates_is_refused() -> None:
    settings = parse_secure(
        {"coord_fraction": 0.001, "upload_budget": 2**31 - 1}, seed=0, server_lr=1.0
    )
    with pytest.raises(ValueError, match="coordinates"):
        check_plan(settings, 3, 2**31)


def test_the_largest_set_passes_and_one_more_is_refused() -> None:
    # Prepare: coord_fraction 1 over models of exactly MAX and MAX + 1 values
    ok = parse_secure({"coord_fraction": 1.0}, seed=0, server_lr=1.0)
    # Execute / Assert
    check_plan(ok, 3, MAX_SECURE_COORDS)
    with pytest.raises(ValueError, match="coordinates"):
        check_plan(ok, 3, MAX_SECURE_COORDS + 1)


def test_create_task_answers_422_naming_the_coordinates(tmp_path: Path) -> None:
    # Prepare: 2^23 values, all shared (a 32 MiB plan)
    body = to_json(_secure_task(2**23))
    # Execute
    with (
        ServerThread(ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        r = http.post("/v1/admin/tasks", json=body, headers=AUTH)
    # Assert
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "validation" and "coordinates" in r.json()["detail"]
