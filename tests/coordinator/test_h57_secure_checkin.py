"""A device selected for a secure round is told to train only while it can still join it:
while its SecAgg group's advertise-keys stage is open. Once that stage closed without the
device (it checked in late, or its group aborted), every later stage refuses it, so an
assignment would only make it download the model and train for nothing, again at every
check-in until the round ends."""

from __future__ import annotations

from pathlib import Path

from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from protocol.secagg import SecAggHeader, Stage
from sdk.secure import SecureParticipant

from .test_service_support import SPEC, initial_params, task_config

DEVICES = [f"{i:032x}" for i in range(5)]


def _secure_round(tmp_path: Path) -> tuple[Coordinator, int, int]:
    """A secure task of five devices, its round opened with all five selected."""
    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    cfg = task_config(
        clients_per_round=5, over_selection=1.0, min_reports=3, deadline_s=600.0,
        secure={"coord_fraction": 0.2, "stage_timeout_s": 300.0},
    )  # fmt: skip
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    for d in DEVICES:
        coord.check_in(d, task_id)
    cur = coord.runtimes[task_id].current
    assert cur is not None and cur.selected == frozenset(DEVICES)
    return coord, task_id, cur.round_id


def _advertise(coord: Coordinator, task_id: int, round_id: int, device: str) -> None:
    plan, headers = coord.secure_setup(round_id, device)
    session = SecureParticipant(SPEC.size).join(
        plan,
        bytes.fromhex(headers[str(SecAggHeader.DIGEST)]),
        coord.runtimes[task_id].published,
        int(headers[str(SecAggHeader.NODE)]),
    )
    coord.secure_upload(round_id, Stage.ADVERTISE_KEYS, device, session.advertise())


def test_a_late_device_is_not_told_to_train_once_advertise_keys_closed_without_it(
    tmp_path: Path,
) -> None:
    # Prepare: four of five advertise their keys; the fifth has not checked in since
    coord, task_id, round_id = _secure_round(tmp_path)
    for d in DEVICES[:4]:
        _advertise(coord, task_id, round_id, d)
    late = DEVICES[4]
    # While the stage is open the fifth may still join
    assert coord.check_in(late, task_id).assignment is not None
    # Execute: the stage closes (its timeout) with the four
    sec = coord.runtimes[task_id].secure
    assert sec is not None
    sec.registry.close_stage(round_id, Stage.ADVERTISE_KEYS)
    answer = coord.check_in(late, task_id)
    # Assert: told to wait for a later round, not to train for this one
    assert answer.action == "wait" and answer.assignment is None
    assert coord.check_in(late).assignment is None  # nor through a check-in naming no task


def test_no_one_is_told_to_train_for_a_secure_round_whose_group_aborted(tmp_path: Path) -> None:
    # Prepare: nobody advertised before the stage closed: the group aborts
    coord, task_id, round_id = _secure_round(tmp_path)
    sec = coord.runtimes[task_id].secure
    assert sec is not None
    sec.registry.close_stage(round_id, Stage.ADVERTISE_KEYS)
    # Execute / Assert
    for d in DEVICES:
        assert coord.check_in(d, task_id).assignment is None
