"""helper-227: a `dp` stage as a secure grouped task's `secure.group_aggregator` is refused.

helper-220 found that `validate_task` took one: the service looks for the dp stage only in
`TaskConfig.aggregator` (which a secure task must set to fedavg), so none of the central-DP
checks reached it (delta >= 1/N, `seed=`, Poisson `q=`, the selection pool, sample >= the
selected cohort), its cohorts were not drawn secretly, and the stage ran on group means, its
`population=`/`sample=` counting group sums instead of devices (with 40 devices in groups of
4 over 3 rounds it reported epsilon 5.26 where the device-level figure is 9.46). Now
`parse_secure` refuses any dp stage there, accounting or not (`GROUP_DP_REFUSAL`, naming the
secure tasks' distributed DP instead): 422 `validation` when the task is created, and a task
stored with one before this check is refused when the coordinator starts (kept as stored, not
run), as any stored config `validate_task` now refuses. The refusal tests fail on the code
before (201, and the stored task restores and runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from compression import encode_snapshot
from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.rounds import Coordinator, creation_warnings
from coordinator.service.secure import GROUP_DP_REFUSAL
from protocol.messages import TaskConfig, to_json
from protocol.names import TaskState

from .test_service_support import (
    ADMIN,
    SPEC,
    initial_params,
    rewrite_stored_config,
    task_config,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}
ACCOUNTED = "dp:clip=1,z=1,population=1000,sample=10,eps=8+fedavg"
# helper-220's four (grouped_dp.py), then a dp stage that accounts nothing, and one behind a
# server optimizer (find_dp looks through it).
REFUSED = [
    ACCOUNTED,
    "dp:clip=1,z=1,population=1000,sample=10,seed=3,eps=8+fedavg",
    "dp:clip=1,z=1,q=0.01,denom=10,eps=8+fedavg",
    "dp:clip=1,z=1,population=1000,sample=10,delta=0.01,eps=8+fedavg",
    "dp:clip=1,z=1,denom=10+fedavg",
    "avgm:0.9+dp:clip=1,z=1,denom=10+fedavg",
]


def grouped(group_aggregator: str, cpr: int = 100, g: int = 10, **secure: Any) -> TaskConfig:
    """helper-220's task: `cpr` devices a round (all selected) in SecAgg groups of `g`."""
    raw = {"group_size": g, "group_aggregator": group_aggregator, **secure}
    return task_config(clients_per_round=cpr, over_selection=1.0, min_reports=3, secure=raw)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("h227") / "p.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as base:
        yield base


def _post(url: str, cfg: TaskConfig) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=30) as http:
        return http.post("/v1/admin/tasks", json=to_json(cfg), headers=AUTH)


@pytest.mark.parametrize("spec", REFUSED)
def test_a_dp_stage_as_the_group_aggregator_is_refused_422(url: str, spec: str) -> None:
    # Execute
    r = _post(url, grouped(spec))
    # Assert: the validation refusal, naming secure.group_aggregator and the alternative
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["reason"] == "validation"
    assert body["detail"] == GROUP_DP_REFUSAL
    assert body["detail"].startswith("secure.group_aggregator: a dp stage is not allowed")
    assert "secure.noise discrete_gaussian or skellam" in body["detail"]


def test_the_same_accounting_dp_string_is_refused_for_a_plain_task_too(url: str) -> None:
    # The parity helper-220 measured against: a plain task of the same 100 devices a round
    # with the first string was already refused (it accounts fewer than it selects).
    r = _post(url, task_config(aggregator=ACCOUNTED, clients_per_round=100, over_selection=1.0))
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "aggregator: dp accounts sample=10 but 100 are selected"


@pytest.mark.parametrize(
    "cfg",
    [
        grouped("median"),
        grouped("fedavg"),
        # the alternative the refusal names: distributed DP in grouped mode
        grouped("median", noise="discrete_gaussian", noise_multiplier=1.0, epsilon_budget=50.0),
    ],
    ids=["median", "fedavg", "median+distributed-dp"],
)
def test_a_grouped_secure_task_without_a_dp_stage_still_creates(url: str, cfg: TaskConfig) -> None:
    r = _post(url, cfg)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "awaiting_model"
    assert creation_warnings(cfg) == []


def _stored_then_rewritten(db: Path, with_model: bool) -> tuple[int, str]:
    """A grouped secure task (fedavg, 6 devices in groups of 3) created and, if `with_model`,
    given its model; then its stored group aggregator rewritten to an accounting dp stage, as
    a store written before this check holds it. Its id and the stored JSON."""
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    task_id = coord.create_task(grouped("fedavg", cpr=6, g=3))
    if with_model:
        coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
        assert task_id in coord.runtimes
    coord.store.close()
    secure = {"group_size": 3, "group_aggregator": ACCOUNTED.replace("sample=10", "sample=6")}
    return task_id, rewrite_stored_config(db, task_id, secure=secure)


@pytest.mark.parametrize("with_model", [True, False], ids=["active", "awaiting_model"])
def test_a_stored_task_with_a_dp_group_aggregator_is_refused_at_start(
    tmp_path: Path, with_model: bool
) -> None:
    # Prepare
    db = tmp_path / "p.db"
    task_id, stored = _stored_then_rewritten(db, with_model)

    # Execute: the upgraded coordinator starts on that store
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()

    # Assert: refused with the reason, not running, its row as stored
    reason = f"ValueError: {GROUP_DP_REFUSAL}"
    assert task_id not in coord.runtimes
    assert coord.refused[task_id].reason == reason
    status = coord.task_status(task_id)
    assert status.state == TaskState.REFUSED
    assert status.refused == reason
    err = coord.refused[task_id].error()
    assert (err.status, err.reason) == (409, "task_refused")
    assert coord.store.task_raw(task_id)[0] == stored  # type: ignore[index]
    coord.store.close()


@pytest.mark.parametrize("z", [1.0, 0.5])
def test_a_noise_multiplier_without_noise_is_refused_422(url: str, z: float) -> None:
    # helper-353: the HTTP API took it (the CLI now refuses it too), and the task looked
    # private while no device added noise
    r = _post(url, grouped("median", noise_multiplier=z))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("secure.noise_multiplier sets the noise of secure.noise")
    ok = _post(url, grouped("median", noise_multiplier=0.0))
    assert ok.status_code == 201, ok.text
