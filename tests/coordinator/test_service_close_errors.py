"""A round whose close fails in an unexpected way is abandoned, never left aggregating; and a
`dp` task the service cannot honour is refused at creation: one whose budget its first round
alone would exceed (its rounds could never publish: `DPMean` refuses them with
`PrivacyBudgetExhausted`), or one accounted as Poisson sampling (`q=`)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.rounds import Coordinator, validate_task
from protocol.messages import to_json
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    admin_get,
    create_task,
    local_data,
    task_config,
    wait_until,
)

# z = 0.3 over 2 of 10 devices: one round alone is far above eps = 0.1 at delta 1e-5.
TOO_SMALL = "dp:z=0.3,clip=1,population=10,sample=2,eps=0.1+fedavg"


def test_validate_task_refuses_a_budget_the_first_round_exceeds() -> None:
    with pytest.raises(ValueError, match=r"dp's first round alone reaches epsilon .* > the budget"):
        validate_task(task_config(aggregator=TOO_SMALL))
    # The same noise with a budget that covers a round is a valid task.
    validate_task(task_config(aggregator=TOO_SMALL.replace("eps=0.1", "eps=1000")))


def test_validate_task_refuses_poisson_accounting() -> None:
    # The coordinator selects fixed-size cohorts: a q= epsilon would bound nothing.
    with pytest.raises(ValueError, match="dp with q= accounts Poisson sampling"):
        validate_task(task_config(aggregator="dp:clip=1,z=1,q=0.5,denom=2+fedavg"))


def test_create_task_answers_422_naming_the_budget(tmp_path: Path) -> None:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        r = http.post(
            "/v1/admin/tasks",
            json=to_json(task_config(aggregator=TOO_SMALL)),
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert r.status_code == 422, r.text
        assert r.json()["reason"] == "validation" and "budget" in r.json()["detail"]
        assert admin_get(http, "/v1/admin/tasks") == []  # nothing was stored


def test_an_unexpected_close_error_abandons_the_round_and_the_task_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the first close raises what the service does not expect (a RuntimeError, as
    # `PrivacyBudgetExhausted` is); later closes run as usual
    real = Coordinator.close_blocking
    calls = {"n": 0}

    def flaky(self: Coordinator, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom: a bug in an aggregator")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Coordinator, "close_blocking", flaky)
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    x, y = local_data(0)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(clients_per_round=1, rounds=2))
        with Client(url, tmp_path / "dev") as device:
            device.register()
            # Execute: round 1's close fails; round 2 must still open and commit
            first = device.participate(SoftmaxTrainer(), x, y, task_id=task_id, max_wait_s=20)
            assert first is not None
            second = device.participate(SoftmaxTrainer(), x, y, task_id=task_id, max_wait_s=20)
            assert second is not None
        status = wait_until(http, f"/v1/admin/tasks/{task_id}", "rounds_closed", 2)
        rounds = admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")
    # Assert: round 1 abandoned with the error recorded (no traceback text), round 2 committed
    assert [r["state"] for r in rounds] == ["abandoned", "committed"]
    assert "boom" in rounds[0]["measurements"]["error"]
    assert status["rounds_committed"] == 1 and status["version"] == 1


def test_creating_a_task_with_a_seeded_dp_stage_logs_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A fixed dp seed makes the noise guessable: a service that allows it (simulations) takes
    # it but says so; a default one refuses it (tests/coordinator/test_h204_seed_service.py).
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, allow_seeded_dp=True
    )
    seeded = "dp:clip=1,z=1,population=10,sample=2,seed=3+fedavg"
    with caplog.at_level("WARNING", logger="plume.coordinator"):
        with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
            create_task(http, task_config(aggregator=seeded))
            create_task(http, task_config(aggregator=seeded.replace(",seed=3", "")))
    warnings = [r.getMessage() for r in caplog.records if "seed=" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("task 1: its dp stage has seed=3")
