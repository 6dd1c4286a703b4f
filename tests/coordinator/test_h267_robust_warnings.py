"""A new task is warned about two robust-aggregation settings that defeat their own rule.

s25/robust findings 2 and 4 (docs/robustness.md says both since c8ee3b7 and 182fc6d):
- Over-selection keeps the first `clients_per_round` uploads of the
  ceil(clients_per_round x over_selection) selected devices. Attackers need not train and can
  all arrive first, so a share a among the selected is up to min(1, a·S/cpr) of the reports,
  while a robust rule's f or trim (and `guarantee_holds`) counts reports
  (`rounds.over_selection_note`).
- Krum with m=1 on top-k uploads keeps the smallest report: one attacker sending a small one
  is selected every round (`rounds.krum_topk_note`).
Both are tasks the coordinator accepts (the service's default over_selection is 1.3), so they
are warnings: logged at creation, answered as the `warnings` of `POST /v1/admin/tasks` and
printed by `plume coordinator create-task`. Every test here that expects a warning failed on
the code before (no such warning existed); the ones that expect none pin where it stops.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.cli import main
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.rounds import creation_warnings, validate_task
from protocol.messages import CodecParams, TaskConfig, to_json

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
SPARSE = CodecParams(topk=0.25, bits=8)
DENSE = CodecParams(topk=1.0, bits=32)
OVER = (
    "over_selection 1.3 selects S = ceil(10·1.3) = 13 devices and keeps the first 10 uploads; "
    "attackers need not train and can all arrive first, so with a share a among the 13 "
    "selected up to min(1, a·13/10) of the reports its robust rule sees can be attackers: "
    "size f/beta for the attackers among the 13 selected, or set over_selection 1 "
    "(docs/robustness.md)"
)
KRUM = (
    "krum keeps the smallest report on top-k uploads (codec.topk 0.25; one small report is "
    "selected every round): use multikrum or nnm+krum (docs/robustness.md)"
)


def _cfg(aggregator: str, over_selection: float = 1.0, **over: Any) -> TaskConfig:
    """A valid task of 10 reports a round (enough for every rule here), no dp stage."""
    cfg = task_config(
        aggregator=aggregator,
        clients_per_round=10,
        over_selection=over_selection,
        **over,
    )
    validate_task(cfg)
    return cfg


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("h267") / "p.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as base:
        yield base


def _warnings(url: str, cfg: TaskConfig) -> list[str]:
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/v1/admin/tasks", json=to_json(cfg), headers=AUTH)
    assert r.status_code == 201, r.text
    warnings: list[str] = r.json()["warnings"]
    return warnings


# --- over-selection in front of a robust rule ----------------------------------------------


def test_a_trimmed_mean_over_an_over_selected_cohort_is_warned_about(url: str) -> None:
    # Execute: the reviewer's setting, trimmed_mean:0.2 with over_selection 1.3
    warnings = _warnings(url, _cfg("trimmed_mean:0.2", 1.3))
    # Assert: the one warning, with the cohort's numbers
    assert warnings == [OVER]


def test_no_over_selection_or_no_robust_rule_has_no_such_warning(url: str) -> None:
    # Execute
    exact = _warnings(url, _cfg("trimmed_mean:0.2", 1.0))
    mean = _warnings(url, _cfg("fedavg", 1.3))
    # Assert
    assert exact == [] and mean == []


@pytest.mark.parametrize(
    "aggregator",
    [
        "median",
        "geomed",
        "cclip:tau=auto",
        "multikrum:f=2",
        "nnm:f=2+multikrum:f=2",
        "bucket:2+median",
        "cosfilter+geomed",  # DEFAULT_ROBUST
        "anomaly:min_cos=0+fedavg",
        "normbound:q=0.9,init=1,max=10+fedavg",
        "rlr:theta=4",
        "adam:lr=0.01+trimmed_mean:0.2",  # behind a server optimizer
    ],
)
def test_every_rule_sized_against_the_attackers_share_gets_it(aggregator: str) -> None:
    assert creation_warnings(_cfg(aggregator, 1.3)) == [OVER]


@pytest.mark.parametrize(
    "aggregator",
    [
        "normbound:5+fedavg",  # a fixed clip: each report's weight, not a share
        "anomaly:max_norm=5+fedavg",  # a fixed norm screen
        "bucket:2+fedavg",  # the mean of bucket means is the mean
        "trimmed_mean:0",  # trims nothing
        "fedavg:uniform=1",
    ],
)
def test_rules_with_no_share_to_size_get_no_such_warning(aggregator: str) -> None:
    assert creation_warnings(_cfg(aggregator, 1.3)) == []


def test_an_over_selection_that_adds_no_device_has_no_such_warning() -> None:
    # ceil(10 x 1.00000000001) is 10 within the service's rounding (`validate_task`'s 1e-9):
    # no device more than the reports kept
    assert creation_warnings(_cfg("median", 1.00000000001)) == []
    assert creation_warnings(_cfg("median", 1.05))[0].startswith(
        "over_selection 1.05 selects S = ceil(10·1.05) = 11 devices and keeps the first 10"
    )


# --- Krum on top-k uploads --------------------------------------------------------------------


def test_krum_on_top_k_uploads_is_warned_about(url: str) -> None:
    # Execute: krum:f=2 (m=1) with the test codec's top-25% uploads, no over-selection
    warnings = _warnings(url, _cfg("krum:f=2", codec=SPARSE))
    # Assert
    assert warnings == [KRUM]


@pytest.mark.parametrize(
    ("aggregator", "codec"),
    [
        ("multikrum:f=2", SPARSE),  # averages n - f reports
        ("multikrum:f=2,m=3", SPARSE),
        ("nnm:f=2+krum:f=2", SPARSE),  # NNM mixes each report with its neighbours first
        ("krum:f=2", DENSE),  # dense reports: Krum's own setting
    ],
)
def test_multikrum_nnm_krum_and_dense_krum_are_not_warned_about(
    url: str, aggregator: str, codec: CodecParams
) -> None:
    assert _warnings(url, _cfg(aggregator, codec=codec)) == []


def test_krum_behind_other_stages_and_both_warnings_in_order() -> None:
    # Krum behind a server optimizer and a clip is still Krum; with over_selection both warn,
    # the over-selection one first
    cfg = _cfg("avgm+normbound:5+krum:f=2", 1.3, codec=SPARSE)
    assert creation_warnings(cfg) == [OVER, KRUM]


# --- where the warnings go -------------------------------------------------------------------


def test_the_coordinator_logs_both_warnings(url: str, caplog: pytest.LogCaptureFixture) -> None:
    # Execute
    with caplog.at_level(logging.WARNING, logger="plume.coordinator"):
        _warnings(url, _cfg("krum:f=2", 1.3, codec=SPARSE))
    # Assert: one line each, after the task's id
    logged = [r.getMessage() for r in caplog.records if r.name == "plume.coordinator"]
    assert [m.split(": ", 1)[1] for m in logged if m.startswith("task ")] == [OVER, KRUM]


def test_create_task_prints_the_over_selection_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: create-task's defaults are 10 reports a round and over_selection 1.3
    db = str(tmp_path / "p.db")
    flags = ["--model", "mlp", "--aggregator", "trimmed_mean:0.2", "--no-error-feedback"]
    with ServerThread(ServiceConfig(db_path=db, admin_token=ADMIN)) as base:
        # Execute
        code = main(["coordinator", "create-task", "--url", base, "--admin-token", ADMIN, *flags])
    err = capsys.readouterr().err
    # Assert
    assert code == 0, err
    assert err.splitlines() == [f"plume coordinator create-task: note: task 1: {OVER}"]
