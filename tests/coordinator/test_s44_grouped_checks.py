"""s44: grouped secure aggregation's checks, and what its robust rule buys.

1. A robust `group_aggregator` over fewer group sums than it needs to differ from their mean
   (median, geomed, trimmed_mean and the like: fewer than 3; krum: its n > 2f + 2) changed
   nothing: `median` over one group of 6 devices, or over two groups of 3 (the median of two is
   their mean), ran as fedavg. `validate_task` (POST /v1/admin/tasks, create-task) now refuses
   it with the group count `split_groups` makes (`group_count`: the last group takes the
   remainder); fedavg takes any number of groups.
2. A `collusion` stage (per-device histories) in `group_aggregator` was accepted, though across
   groups it sees `group-{g}` sums, reshuffled each round. `SecureConfig` refuses it
   (`GroupHistoryError`), so the service answers 422 and a task stored with one is refused at
   start (kept as stored), as a stored dp stage there is (helper-227).
3. `create-task --secure-fraction X --secure-upload-budget B`: the fraction was ignored.
4. What grouped mode is for: one malicious device in a round of 12 in groups of 3 moves the
   median across groups less along the honest direction than fedavg across groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main
from coordinator.secure import SecureConfig, SecureCoordinator, split_groups
from coordinator.secure._config import GroupHistoryError, group_count, group_refusal
from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.rounds import Coordinator, validate_task
from mobile_sim.secure import run_secure_round
from protocol.names import TaskState
from sdk.secure import SecureParticipant

from .test_h227_group_dp_refused import _post, grouped
from .test_service_support import ADMIN, initial_params, rewrite_stored_config, task_config


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("s44") / "p.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as u:
        yield u


# -- 1. a robust rule over too few groups ------------------------------------------------------


@pytest.mark.parametrize("cohort", range(1, 40))
@pytest.mark.parametrize("g", [3, 4, 7, 10])
def test_group_count_is_the_number_of_groups_split_groups_makes(cohort: int, g: int) -> None:
    ids = [f"d{i}" for i in range(cohort)]
    assert group_count(cohort, g) == len(split_groups(ids, g, b"\0" * 32))


@pytest.mark.parametrize(
    ("agg", "cpr", "g", "groups"),
    [
        ("median", 6, 10, "1 group sum"),  # the reviewer's: one group
        ("median", 6, 3, "2 group sums"),  # two: their median is their mean
        ("median", 8, 3, "2 group sums"),  # the last group takes the remainder (3 + 5)
        ("geomed", 7, 3, "2 group sums"),
        ("normbound:5+geomed", 8, 4, "2 group sums"),
        ("cosfilter+median", 5, 3, "1 group sum"),
        ("normbound:5+median", 6, 3, "2 group sums"),  # the clip acts; the median does not
    ],
)
def test_a_robust_rule_over_fewer_than_3_groups_is_refused(
    agg: str, cpr: int, g: int, groups: str
) -> None:
    with pytest.raises(ValueError) as caught:
        validate_task(grouped(agg, cpr, g))
    text = str(caught.value)
    assert text.startswith("secure.group_aggregator: ")
    assert "needs 3 group sums or more a round" in text
    assert f"a full round has {groups} ({cpr} devices selected in groups of" in text
    assert "raise clients_per_round or lower secure.group_size, or use fedavg" in text


def test_krum_keeps_its_own_bound() -> None:
    with pytest.raises(ValueError, match="Krum needs n > 2f \\+ 2"):
        validate_task(grouped("krum:f=1", 12, 4))


@pytest.mark.parametrize(
    ("agg", "cpr", "g"),
    [
        ("fedavg", 3, 3),  # one group: fedavg takes any number
        ("fedavg", 6, 3),
        ("normbound:5+fedavg", 5, 3),
        ("avgm:0.9+fedavg", 6, 3),
        ("median", 9, 3),
        ("median", 11, 3),  # 3 + 3 + 5
        ("geomed", 12, 4),
        # screens that judge each group sum on its own act on two as on ten (a reviewer's
        # anomaly:max_norm=10,max_drop=1 drops a bad sum of two; refused for a while)
        ("anomaly:max_norm=10,max_drop=1+fedavg", 8, 4),
        ("anomaly:max_norm=10+fedavg", 6, 3),
        ("cosfilter+fedavg", 6, 3),
        ("cclip", 6, 3),
    ],
)
def test_enough_groups_or_fedavg_is_accepted(agg: str, cpr: int, g: int) -> None:
    validate_task(grouped(agg, cpr, g))
    assert group_refusal(agg, cpr, g, src="-", grow="-") is None


def test_the_service_answers_422_naming_the_field(url: str) -> None:
    r = _post(url, grouped("median", 6, 3))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(
        "secure.group_aggregator: median needs 3 group sums or more a round"
    )
    assert _post(url, grouped("median", 9, 3)).status_code == 201


def test_create_task_refuses_it_as_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before any request (nothing listens at the URL): status 2, one line
    rc = main(_create_args("--secure-group-size", "3", "--secure-group-aggregator", "median"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("plume coordinator create-task: error: --secure-group-aggregator: ")
    assert "a full round has 2 group sums (6 devices selected in groups of " in err


def _create_args(*extra: str) -> list[str]:
    return [
        "coordinator", "create-task", "--url", "http://127.0.0.1:9", "--admin-token", ADMIN,
        "--model", "mlp", "--rounds", "2", "--clients-per-round", "6", "--over-selection",
        "1", "--secure", *extra,
    ]  # fmt: skip


# -- 2. a stage with per-device histories across groups ----------------------------------------

COLLUSION = ["collusion+median", "collusion:tau=0.5,memory=3+fedavg", "avgm:0.9+collusion+geomed"]


@pytest.mark.parametrize("agg", COLLUSION)
def test_secure_config_refuses_a_collusion_stage_across_groups(agg: str) -> None:
    with pytest.raises(GroupHistoryError, match="has a collusion stage, which keeps per-device"):
        SecureConfig(group_size=3, group_aggregator=agg)
    # Without groups group_aggregator is unused (as a dp stage there is not checked then)
    SecureConfig(group_aggregator=agg)


def test_the_service_refuses_a_collusion_stage_422(url: str) -> None:
    r = _post(url, grouped("collusion+median", 9, 3))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(
        "secure: group_aggregator 'collusion+median' has a collusion stage"
    )


def test_create_task_refuses_a_collusion_stage(capsys: pytest.CaptureFixture[str]) -> None:
    agg = ["--secure-group-size", "3", "--secure-group-aggregator", "collusion+median"]
    rc = main(_create_args(*agg, "--clients-per-round", "9"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "group_aggregator 'collusion+median' has a collusion stage" in err
    assert err.rstrip().endswith("(--secure-group-aggregator)")


@pytest.mark.parametrize("with_model", [True, False], ids=["active", "awaiting_model"])
def test_a_stored_task_with_a_collusion_stage_is_refused_at_start(
    tmp_path: Path, with_model: bool
) -> None:
    # Prepare: a grouped median task, its stored group aggregator then rewritten to one with a
    # collusion stage (as a store written before this check may hold it)
    from compression import encode_snapshot

    from .test_service_support import SPEC

    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    task_id = coord.create_task(grouped("median", 9, 3))
    other = coord.create_task(grouped("fedavg", 9, 3))
    if with_model:
        coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    coord.store.close()
    stored = rewrite_stored_config(
        db, task_id, secure={"group_size": 3, "group_aggregator": "collusion+median"}
    )

    # Execute: the coordinator starts on that store
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()

    # Assert: the store loads; that task is refused with the reason and kept as stored, the
    # other one is untouched
    assert task_id not in coord.runtimes
    reason = coord.refused[task_id].reason
    assert reason.startswith("ValueError: secure: group_aggregator 'collusion+median' has a")
    assert coord.task_status(task_id).state == TaskState.REFUSED
    assert coord.store.task_raw(task_id)[0] == stored  # type: ignore[index]
    assert other not in coord.refused
    assert coord.task_status(other).state == TaskState.AWAITING_MODEL
    coord.store.close()


# -- 3. --secure-fraction and --secure-upload-budget -------------------------------------------


def test_create_task_refuses_a_fraction_with_a_budget(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(_create_args("--secure-fraction", "0.05", "--secure-upload-budget", "40000"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(
        "plume coordinator create-task: error: --secure-fraction and --secure-upload-budget "
        "both set the shared coordinates a round"
    )


def test_the_service_refuses_a_fraction_with_a_budget_422(url: str, tmp_path: Path) -> None:
    # Prepare
    both = task_config(clients_per_round=5, secure={"coord_fraction": 0.05, "upload_budget": 40000})
    # Execute
    r = _post(url, both)
    # Assert: refused for a new task; one stored so before still loads and runs on its budget
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(
        "secure.coord_fraction and secure.upload_budget both set the shared coordinates a round"
    )
    validate_task(both)
    assert _post(url, task_config(clients_per_round=5, secure={"upload_budget": 40000})).is_success


# -- 4. what the median across groups buys ---------------------------------------------------

D = 4000
N, G = 12, 3


def _round_step(group_aggregator: str, attack: bool) -> np.ndarray:
    """The step of one grouped secure round (seeded) of 12 devices in groups of 3, each pushing
    along +1 (0.01 a coordinate, plus noise); with `attack` one device sends -1000 a coordinate
    instead, which its own clip bounds to norm C at the shared coordinates."""
    rng = np.random.default_rng(7)
    devs = [f"dev-{i:02d}" for i in range(N)]
    ups = {d: ((0.01 + rng.normal(0, 0.002, D)).astype(np.float32), 1) for d in devs}
    if attack:
        ups[devs[5]] = (np.full(D, -1000.0, np.float32), 1)
    cfg = SecureConfig(
        coord_fraction=0.1,
        value_bits=8,
        clip_norm=1.0,
        group_size=G,
        group_aggregator=group_aggregator,
        seed=3,
    )
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    parts = {d: SecureParticipant(D) for d in devs}
    out, _ = run_secure_round(
        coord, parts, ups, rng_for=lambda d: np.random.default_rng(int(d[-2:]))
    )
    assert out.committed and out.measurements["groups"] == N // G
    assert sorted(out.contributors) == devs  # the attacker's report is in, as every other
    return out.update


def _along_honest(step: np.ndarray) -> float:
    """The step along the honest direction (+1): its mean over the coordinates it moved."""
    return float(step[step != 0].mean())


def test_the_median_across_groups_is_moved_less_by_one_malicious_device() -> None:
    # Execute: each rule across the 4 group sums, without and with the attacker
    shift = {}
    for agg in ("fedavg", "median"):
        clean = _along_honest(_round_step(agg, attack=False))
        assert clean > 0.009  # both rules follow the honest devices without an attack
        shift[agg] = clean - _along_honest(_round_step(agg, attack=True))

    # Assert: the attacker pulls fedavg's step against the honest direction (by 1/12 of its
    # clipped report), the median's far less: its group sum is one outlier of 4, and the median
    # of 4 is the mean of the middle two, honest, ones.
    assert shift["fedavg"] > 0
    assert abs(shift["median"]) < shift["fedavg"] / 4, shift
