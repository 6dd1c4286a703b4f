"""What an HTTP run's coordinator task ran with, in wall seconds, is in its results (helper-299).

f7765f2 made a plain HTTP run's rounds.json `config` record its task's downlink and selection
timeout. Two things were still missing:

- A secure run over HTTP (`mobile_sim.secure.HttpSecureFleet`) created its task with a
  selection timeout of a week (a round opens with the whole cohort) and a round deadline of
  4 x stage_cap_s + 60 s, and recorded `selection_timeout_s: 900.0` (the realistic fleet's
  simulated default, unused) and nothing about the deadline. Now its config records the
  task's selection timeout, and rounds.json's new top-level `http` the deadline and the
  stage timing (`HttpSecureFleet.settings`).
- An HTTP task's round deadline is wall seconds; `config.deadline_s` is simulated seconds,
  which HTTP and secure runs refuse, so it stays None (SimConfig.from_dict of the record runs
  again) and the deadline goes in `SimResult.http` (`http.deadline_s`), not a new config key
  (bench/robustness.py --merge's `_same_setting` compares key sets). `abandoned_warning` names
  it ("the HTTP task's 120 s wall-clock round deadline"); before, with `deadline_s` None, it
  left the cause to rounds.json, and a recorded `deadline_s` would have blamed --deadline or
  "the coordinator's default" (60 s, TaskConfig.deadline_s).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.robustness import _same_setting
from coordinator.ledger import BandwidthLedger
from coordinator.secure import SecureConfig
from coordinator.service.admin_client import AdminClient
from mobile_sim import runner
from mobile_sim.clock import COORDINATOR_DEADLINE_S
from mobile_sim.report import abandoned_warning, write_run
from mobile_sim.runner import RoundRecord, SimConfig, SimResult
from mobile_sim.secure import HttpSecureFleet, run_secure_simulation
from protocol.messages import TaskConfig

# 6 digits-MLP devices, 4 a round (a secure round opens with at least 3), 2 rounds
SECURE_CFG = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=6,
    per_round=4,
    rounds=2,
    local_epochs=1,
    batch_size=16,
    partition="iid",
    seed=3,
)


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[TaskConfig]:
    """Each task a fleet creates on its coordinator, as sent."""
    tasks: list[TaskConfig] = []
    create = AdminClient.create_task

    def noting(self: AdminClient, task: TaskConfig, *args: Any, **kwargs: Any) -> Any:
        tasks.append(task)
        return create(self, task, *args, **kwargs)

    monkeypatch.setattr(AdminClient, "create_task", noting)
    return tasks


def _secure(cfg: SimConfig, transport: str) -> SimResult:
    secure = SecureConfig(coord_fraction=0.5)
    return run_secure_simulation(cfg, secure, dropout=0.0, progress=False, transport=transport)


@pytest.mark.timeout(240)
def test_a_secure_http_run_records_its_tasks_selection_timeout_and_deadline(
    tmp_path: Path, created: list[TaskConfig]
) -> None:
    # Execute
    result = _secure(SECURE_CFG, "http")
    write_run(result, tmp_path / "first")

    # Assert: the config has the task's selection timeout, a week (not the unused 900 s) ...
    (task,) = created
    doc = json.loads((tmp_path / "first" / "rounds.json").read_text())
    config = doc["config"]
    assert config["selection_timeout_s"] == task.selection_timeout_s == 7 * 86400.0
    # ... its simulated deadline stays null and the task's wall-clock one is in `http`
    assert config["deadline_s"] is None
    assert doc["http"] == {"deadline_s": task.deadline_s, "stage_idle_s": 1.0, "stage_cap_s": 60.0}
    assert task.deadline_s == 4 * 60.0 + 60.0
    # ... the downlink stays null: the secure task's is lossless (exact fp32 downloads)
    assert (config["downlink_topk"], config["downlink_bits"]) == (None, None)
    assert (task.downlink.topk, task.downlink.bits) == (1.0, 32)
    # ... the config's keys are an in-process config's, so robustness --merge still compares
    assert set(config) == set(SimConfig().as_dict())
    # ... the config given is left as it was
    assert SECURE_CFG.selection_timeout_s == 900.0

    # Execute: the recorded config again, over HTTP (one round)
    again = SimConfig.from_dict({**config, "rounds": 1})
    rerun = _secure(again, "http")

    # Assert: it runs, with the same task timing, and records the same config
    first, second = created
    assert (second.selection_timeout_s, second.deadline_s) == (
        first.selection_timeout_s,
        first.deadline_s,
    )
    assert rerun.config.as_dict() == {**config, "rounds": 1}
    assert rerun.http == result.http
    assert _same_setting(doc, again.as_dict() | {"rounds": SECURE_CFG.rounds})


@pytest.mark.timeout(120)
def test_an_in_process_secure_run_records_no_http_settings(
    tmp_path: Path, created: list[TaskConfig]
) -> None:
    # Execute
    result = _secure(replace(SECURE_CFG, rounds=1), "inproc")
    write_run(result, tmp_path)

    # Assert: as before: no task, the config as given, no `http` key
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert created == [] and result.http is None
    assert "http" not in doc
    assert doc["config"]["selection_timeout_s"] == 900.0


def test_the_secure_fleets_task_is_made_with_what_it_records() -> None:
    fleet = HttpSecureFleet.__new__(HttpSecureFleet)
    fleet.stage_idle_s, fleet.stage_cap_s = 0.5, 10.0
    assert fleet.settings() == {"deadline_s": 100.0, "stage_idle_s": 0.5, "stage_cap_s": 10.0}
    assert HttpSecureFleet.SELECTION_TIMEOUT_S == 604800.0


def test_a_recorded_config_is_a_copy_with_the_values_given() -> None:
    defaulted = SimConfig(fleet="realistic", clients=20, per_round=5).with_coordinator_deadline()
    out = runner._recorded_config(defaulted, selection_timeout_s=30.0)
    assert out.selection_timeout_s == 30.0 and defaulted.selection_timeout_s == 900.0
    # its marks are kept (a replace would lose them)
    assert out.deadline_defaulted and out.as_dict()["deadline_defaulted"] is True
    with pytest.raises(TypeError, match="no field 'selection_timeout'"):
        runner._recorded_config(defaulted, selection_timeout=30.0)


def _abandoned(cfg: SimConfig, reports: list[int], http: dict[str, Any] | None) -> SimResult:
    """A result whose rounds were all abandoned by the engine with `reports` reports each."""
    records = [
        RoundRecord(
            round=i + 1,
            accuracy=None,
            loss=None,
            train_loss=float("nan"),
            reports=n,
            committed=False,
            bytes_up=0,
            bytes_down=0,
            dense_up=0,
            dense_down=0,
            wire_up=0,
            wire_down=0,
            ratio_up=None,
            wall_s=1.0,
            measurements={"abandoned": f"{n} reports < min_reports {cfg.min_reports}"},
        )
        for i, n in enumerate(reports)
    ]
    empty = np.zeros(1, np.float32)
    return SimResult(cfg, records, BandwidthLedger(), 1, empty, "compressed", http=http)


HTTP_CFG = SimConfig(dataset="digits", clients=4, per_round=2, min_reports=2, fleet="off")


@pytest.mark.parametrize(
    ("reports", "why"),
    [
        ([0, 0], "no report before the HTTP task's 120 s wall-clock round deadline"),
        (
            [1, 0],
            "fewer than --min-reports 2 reports before the HTTP task's 120 s wall-clock round "
            "deadline",
        ),
    ],
)
def test_the_abandoned_warning_names_an_http_tasks_wall_clock_deadline(
    reports: list[int], why: str
) -> None:
    # Execute
    warning = abandoned_warning(_abandoned(HTTP_CFG, reports, {"deadline_s": 120.0}))

    # Assert: the HTTP task's deadline and number, neither --deadline nor the coordinator's
    # default (60 s)
    assert warning == f"warning: 2 of 2 rounds were abandoned ({why}); the model never changed"
    assert COORDINATOR_DEADLINE_S == 60.0
    # ... another wall deadline (a library run's HttpFleetOptions) is the one named
    other = abandoned_warning(_abandoned(HTTP_CFG, reports, {"deadline_s": 1.5}))
    assert "the HTTP task's 1.5 s wall-clock round deadline" in str(other)


def test_without_an_http_deadline_the_warning_is_as_before() -> None:
    # in process, no deadline: rounds.json says why
    plain = abandoned_warning(_abandoned(HTTP_CFG, [0], None))
    assert plain == (
        "warning: 1 of 1 rounds were abandoned (measurements.abandoned in rounds.json says "
        "why); the model never changed"
    )
    # a simulated deadline given wins (in-process runs have no `http`)
    timed = replace(HTTP_CFG, fleet="timing", deadline_s=30.0)
    assert "(no report before --deadline 30 s)" in str(
        abandoned_warning(_abandoned(timed, [0], None))
    )


def test_write_run_records_http_only_when_the_result_has_it(tmp_path: Path) -> None:
    write_run(_abandoned(HTTP_CFG, [0], None), tmp_path / "inproc")
    write_run(_abandoned(HTTP_CFG, [0], {"deadline_s": 120.0}), tmp_path / "http")
    inproc = json.loads((tmp_path / "inproc" / "rounds.json").read_text())
    http = json.loads((tmp_path / "http" / "rounds.json").read_text())
    assert "http" not in inproc
    assert http["http"] == {"deadline_s": 120.0}
    assert http["config"] == inproc["config"]
