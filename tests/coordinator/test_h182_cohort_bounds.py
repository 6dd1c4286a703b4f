"""Tasks whose full rounds can never meet their rule's bound are refused; rounds in which a
fraction f resolves to 0 say so (`guarantee_holds: false`).

helper-180's review: validate_task only built the spec, so krum:f=2 with clients_per_round=4
(Krum needs n > 2f + 2), multikrum:f=3 with 5 and krum:f=0.45 with 10 were accepted and ran
every round without the guarantee. And a fraction that resolves to 0 in a round
(trimmed_mean:0.1 at n = 9, multikrum:f=0.2 at n = 4) computed the plain mean or selection
while Krum reported `guarantee_holds: true`.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from compression import SparseUpdate, encode_snapshot
from coordinator.aggregators import ClientUpdate, build_aggregator
from coordinator.cli import main as plume
from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.rounds import Coordinator, validate_task
from protocol.messages import to_json
from tests.mobile_sim.test_h84_cli import TINY

from .test_service_support import ADMIN, SPEC, initial_params, rewrite_stored_config, task_config

REFUSED = [
    # spec, clients_per_round, what the reason says
    ("krum:f=2", 4, "krum: Krum needs n > 2f + 2, so f=2 needs more than 6 reports a round"),
    ("krum:f=2", 6, "and a full round has 6 (clients_per_round)"),
    ("multikrum:f=3", 5, "multikrum: Krum needs n > 2f + 2, so f=3 needs more than 8 reports"),
    ("krum:f=0.45", 10, "f=0.45 (floor(f·n) = 4) needs more than 10 reports a round"),
    ("multikrum:f=0.2", 4, "multikrum: f=0.2 (floor(f·n) = 0) of a full round's 4 reports"),
    ("nnm:f=5+krum:f=1", 9, "nnm: NNM needs f < n/2, so f=5 needs more than 10 reports"),
    ("nnm:f=0.2+geomed", 4, "tolerates none"),
    ("trimmed_mean:0.1", 9, "trimmed_mean: beta=0.1 trims floor(beta·n) = 0 of a full round's 9"),
    ("bucket:2+krum:f=2", 10, "more than 6 bucket means a round, and a full round has 5"),
    ("cosfilter+normbound:1+krum:f=3", 8, "krum: Krum needs n > 2f + 2, so f=3"),
]

ACCEPTED = [
    ("krum:f=2", 7),
    ("krum:f=0.45", 11),
    ("multikrum:f=0.2", 10),
    ("krum:f=0", 3),
    ("trimmed_mean:0.1", 10),
    ("trimmed_mean:0", 2),
    ("nnm:f=2+krum:f=1", 5),
    ("bucket:2+krum:f=1", 9),
    ("median", 1),
    ("geomed", 2),
    ("fedavg", 1),
]


@pytest.mark.parametrize(("spec", "cpr", "reason"), REFUSED)
def test_validate_task_refuses_a_cohort_that_never_meets_the_bound(
    spec: str, cpr: int, reason: str
) -> None:
    cfg = task_config(aggregator=spec, clients_per_round=cpr)
    with pytest.raises(ValueError) as err:
        validate_task(cfg)
    assert str(err.value).startswith("aggregator: ")
    assert reason in str(err.value)


@pytest.mark.parametrize(("spec", "cpr"), ACCEPTED)
def test_validate_task_accepts_a_cohort_that_meets_it(spec: str, cpr: int) -> None:
    validate_task(task_config(aggregator=spec, clients_per_round=cpr, min_reports=1))


def test_the_service_answers_422_naming_the_rule(tmp_path: Path) -> None:
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        r = http.post(
            "/v1/admin/tasks",
            json=to_json(task_config(aggregator="krum:f=2", clients_per_round=4)),
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        ok = http.post(
            "/v1/admin/tasks",
            json=to_json(task_config(aggregator="krum:f=1", clients_per_round=5)),
            headers={"authorization": f"Bearer {ADMIN}"},
        )
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "validation"
    assert "Krum needs n > 2f + 2, so f=2 needs more than 6 reports a round" in r.json()["detail"]
    assert ok.status_code in (200, 201), ok.text


def _reports(n: int, d: int = 8) -> list[ClientUpdate]:
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        v = rng.normal(1.0, 0.3, size=d).astype(np.float32)
        if i == 0:
            v = -1e6 * v
        out.append(ClientUpdate(f"d{i}", SparseUpdate(np.arange(d), v, d), 1.0))
    return out


def _find(meas: dict, key: str) -> dict:  # type: ignore[type-arg]
    while key not in meas:
        meas = meas["inner"]
    return meas


@pytest.mark.parametrize(
    ("spec", "n", "key", "holds"),
    [
        ("trimmed_mean:0.1", 9, "trimmed_each_side", False),
        ("trimmed_mean:0.1", 10, "trimmed_each_side", True),
        ("trimmed_mean:0.2,support=1", 4, "trimmed_each_side", False),
        ("multikrum:f=0.2", 4, "m", False),
        ("multikrum:f=0.2", 5, "m", True),
        ("krum:f=0.2", 4, "m", False),
        ("krum:f=0", 3, "m", True),  # a count of 0 is what was asked for
        ("nnm:f=0.2+fedavg", 4, "neighbours", False),
        ("nnm:f=0.2+fedavg", 5, "neighbours", True),
        ("nnm:f=2+fedavg", 4, "neighbours", False),  # Allouah et al.: f < n/2
        ("nnm:f=2+fedavg", 5, "neighbours", True),
    ],
)
def test_a_round_whose_fraction_resolves_to_zero_says_its_guarantee_does_not_hold(
    spec: str, n: int, key: str, holds: bool
) -> None:
    proc = build_aggregator(spec).create(8)
    out = proc.next(proc.initialize(), _reports(n))
    meas = _find(out.measurements, key)
    assert meas["guarantee_holds"] is holds


def test_the_aggregate_itself_is_unchanged() -> None:
    # trimmed_mean:0.1 at n = 9 trims 0: the plain (uniform) mean, as before.
    ups = _reports(9)
    proc = build_aggregator("trimmed_mean:0.1").create(8)
    out = proc.next(proc.initialize(), ups)
    mean = np.mean([u.update.values.astype(np.float64) for u in ups], axis=0)
    np.testing.assert_allclose(out.result, mean, rtol=1e-6)
    assert out.measurements["trimmed_each_side"] == 0


def test_a_sim_run_whose_fraction_vanishes_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 4 reports a round: multikrum:f=0.2 tolerates floor(0.8) = 0 of them.
    flags = ["--rounds", "1", "--aggregator", "multikrum:f=0.2", "--out", str(tmp_path)]
    code = plume([*TINY, *flags])
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["summary"]["robust_guarantee_failed_rounds"] == [1]
    warning = next(x for x in out.splitlines() if "warning" in x)
    assert "Krum with f=0.2 tolerates floor(f·n) = 0 reports, the round had 4" in warning


def test_a_stored_task_with_such_a_cohort_is_refused_at_start(tmp_path: Path) -> None:
    # Prepare: a task stored with krum:f=2 and clients_per_round 7, rewritten to 4 as a store
    # written before this check could hold it.
    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    task_id = coord.create_task(task_config(aggregator="krum:f=2", clients_per_round=7))
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    coord.store.close()
    stored = rewrite_stored_config(db, task_id, clients_per_round=4)
    # Execute
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    # Assert
    assert task_id not in coord.runtimes
    assert "Krum needs n > 2f + 2, so f=2 needs more than 6" in coord.refused[task_id].reason
    assert coord.store.task_raw(task_id)[0] == stored  # type: ignore[index]
    coord.store.close()
