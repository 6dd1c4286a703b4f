"""A new secure task's distributed-DP delta must be below 1/n, n the cohort a round selects.

The privacy reviewer's F2 (notes s25/dp): `SecureConfig` checked only 0 < dp_delta < 1, so a
task could state delta 0.9 and report an epsilon near 0 (and judge its `epsilon_budget` at that
delta), while a central `dp` stage's delta at or above 1/N is refused at creation
(`delta_refusal`). Now `create_task` refuses a secure task with noise and dp_delta >= 1/n, with
the same reasoning; and `--secure-epsilon-budget`'s help no longer says "at delta 1e-5" for
every task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.rounds import secure_delta_refusal
from protocol.messages import TaskConfig, to_json

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
NOISE: dict[str, Any] = {
    "coord_fraction": 0.25,
    "noise": "discrete_gaussian",
    "noise_multiplier": 1.0,
}


def _secure(clients: int = 4, over: float = 1.5, **secure: Any) -> TaskConfig:
    # 4 x 1.5 = 6 devices selected a round
    return task_config(clients_per_round=clients, over_selection=over, min_reports=3, secure=secure)


@pytest.fixture()
def url(tmp_path: Path) -> Iterator[str]:
    with ServerThread(ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)) as u:
        yield u


def test_a_delta_at_or_above_one_over_the_cohort_is_refused() -> None:
    # Assert: 1/6 and above refused, naming n; just below it taken
    why = secure_delta_refusal(_secure(**NOISE, dp_delta=1 / 6))
    assert why is not None
    assert why.startswith("dp_delta 0.166667 is not below 1/n = 1/6 (the 6 devices each round")
    assert "assumption 8" in why
    assert secure_delta_refusal(_secure(**NOISE, dp_delta=0.9)) is not None
    assert secure_delta_refusal(_secure(**NOISE, dp_delta=0.16)) is None
    assert secure_delta_refusal(_secure(**NOISE)) is None  # the default 1e-5
    # No noise: the delta is unused; a plain task has none
    assert secure_delta_refusal(_secure(coord_fraction=0.25, dp_delta=0.9)) is None
    assert secure_delta_refusal(replace(task_config(), secure=None)) is None


def test_create_task_answers_422_naming_the_delta(url: str) -> None:
    with httpx.Client(base_url=url, headers=AUTH) as http:
        # Execute
        refused = http.post("/v1/admin/tasks", json=to_json(_secure(**NOISE, dp_delta=0.2)))
        taken = http.post("/v1/admin/tasks", json=to_json(_secure(**NOISE, dp_delta=1e-4)))

    # Assert
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["reason"] == "validation"
    assert body["detail"].startswith("secure: dp_delta 0.2 is not below 1/n = 1/6")
    assert taken.status_code == 201, taken.text


def test_the_budget_flags_help_names_the_tasks_delta() -> None:
    from coordinator._cli import _SECURE_FLAGS

    (helptext,) = [h for f, _, _, h in _SECURE_FLAGS if f == "--secure-epsilon-budget"]
    assert "at delta 1e-5" not in helptext
    assert "at the task's secure.dp_delta, default 1e-5" in helptext
