"""A plain HTTP run's results record its fleet options that the config has no field for
(helper-299; with http_fleet._recorded_options). Before, rounds.json said nothing of the
task's 120 s wall-clock round deadline (`HttpFleetOptions.deadline_s`; `config.deadline_s` is
simulated seconds, refused over HTTP, and stays null) nor of a library run's `dropout`,
`retry_after_s` and `poll_s`; and a run whose rounds the deadline abandoned warned only
"measurements.abandoned in rounds.json says why". Now rounds.json's top-level `http` holds
them (`SimResult.http`), and the warning names the task's deadline and its number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from coordinator.service.admin_client import AdminClient
from mobile_sim import http_fleet
from mobile_sim.report import abandoned_warning, write_run
from mobile_sim.runner import SimConfig
from protocol.messages import TaskConfig

# 4 digits-MLP devices, 2 a round, 2 rounds
CFG = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=4,
    per_round=2,
    rounds=2,
    topk=0.1,
    bits=8,
    local_epochs=1,
    batch_size=16,
    partition="iid",
    fleet="off",
    seed=5,
)
TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "4", "--per-round",
    "2", "--rounds", "1", "--local-epochs", "1", "--batch-size", "16", "--partition", "iid",
    "--seed", "5", "--no-progress", "--transport", "http",
]  # fmt: skip


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[TaskConfig]:
    """Each task the fleet creates on its coordinator, as sent."""
    tasks: list[TaskConfig] = []
    create = AdminClient.create_task

    def noting(self: AdminClient, task: TaskConfig, *args: Any, **kwargs: Any) -> Any:
        tasks.append(task)
        return create(self, task, *args, **kwargs)

    monkeypatch.setattr(AdminClient, "create_task", noting)
    return tasks


@pytest.mark.timeout(120)
def test_plume_sim_over_http_records_the_tasks_wall_clock_deadline_and_the_options(
    tmp_path: Path, created: list[TaskConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    assert plume([*TINY, "--out", str(tmp_path)]) == 0, capsys.readouterr().err

    # Assert: the task's 120 s wall deadline and the fleet's options are in `http`; the
    # config's simulated deadline stays null, so the record reruns
    (task,) = created
    doc = json.loads((tmp_path / "rounds.json").read_text())
    opts = http_fleet.HttpFleetOptions()
    assert doc["http"] == {
        "deadline_s": task.deadline_s,
        "dropout": opts.dropout,
        "retry_after_s": task.retry_after_s,
        "poll_s": opts.poll_s,
    }
    assert task.deadline_s == opts.deadline_s == 120.0
    assert doc["config"]["deadline_s"] is None
    assert set(doc["config"]) == set(SimConfig().as_dict())
    assert "admin_token" not in doc["http"]
    again = SimConfig.from_dict(doc["config"])
    spec = _spec()
    assert http_fleet._task_config(again, spec, "", opts).deadline_s == task.deadline_s


@pytest.mark.timeout(120)
def test_a_plain_http_run_whose_devices_all_drop_blames_its_wall_clock_deadline(
    tmp_path: Path, created: list[TaskConfig]
) -> None:
    # Prepare: a library run whose every device drops, against a 1.5 s deadline
    opts = http_fleet.HttpFleetOptions(dropout=1.0, deadline_s=1.5)

    # Execute
    result = http_fleet.run_http_simulation(CFG, progress=False, options=opts)
    write_run(result, tmp_path)

    # Assert: the engine abandoned both rounds; the warning names the task's deadline
    assert [(r.committed, r.reports) for r in result.records] == [(False, 0), (False, 0)]
    assert abandoned_warning(result) == (
        "warning: 2 of 2 rounds were abandoned (no report before the HTTP task's 1.5 s "
        "wall-clock round deadline); the model never changed"
    )
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["http"]["dropout"] == 1.0 and doc["http"]["deadline_s"] == 1.5
    assert doc["config"]["deadline_s"] is None


def _spec() -> Any:
    from mobile_sim.models import build_model
    from sdk.flat import spec_from_module

    return spec_from_module(build_model("digits_mlp", seed=0))
