"""The client with more than one accepted upload awaiting its round's outcome: check-ins name
the records in turn (a `pending` round does not hold back the others), each is settled once;
against a loopback coordinator, an upload accepted in one task while an earlier accepted upload
of another task is still pending is not lost when that earlier round is abandoned."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt

from compression import CodecConfig, ErrorFeedback, UpdateCodec
from sdk import Client
from sdk.device_store import AcceptedUpload, DeviceStore
from tests.coordinator.test_service_support import SPEC as TASK_SPEC
from tests.coordinator.test_service_support import (
    SoftmaxTrainer,
    await_assignment,
    create_task,
    local_data,
    task_config,
)

from .test_client_abandoned_round import (
    DEADLINE_S,
    _assign_all,
    _await_state,
    _Bodies,
    _pass_deadline,
)
from .test_client_abandoned_round import url as url  # noqa: F401  (the loopback fixture)
from .test_review_device_state import SPEC

CONTENT = {r: np.full(SPEC.size, float(r), np.float32) for r in (5, 6, 7)}


def _dense(r: int) -> bytes:
    frame, _ = UpdateCodec(SPEC, CodecConfig.dense()).encode(
        CONTENT[r], np.random.default_rng(0), weight=1.0
    )
    return frame


def _residual(
    root: Path, size: int = SPEC.size, task_id: int | None = None
) -> npt.NDArray[np.float32]:
    ef = DeviceStore(root).load_residual(size, task_id)
    assert ef is not None
    return ef.residual.copy()


def test_check_ins_name_the_records_in_turn_and_settle_each_once(tmp_path: Path) -> None:
    # Prepare: records of rounds 5 and 6, a residual of 0.25; the coordinator says round 5 is
    # still pending, then round 6 abandoned, then round 5 committed
    store = DeviceStore(tmp_path)
    ef = ErrorFeedback(SPEC.size)
    ef.residual[:] = 0.25
    store.save_residual(ef)
    for r in (5, 6):
        store.save_accepted(AcceptedUpload(r, _dense(r), SPEC))
    outcomes = {5: ["pending", "committed"], 6: ["abandoned"]}
    named: list[int | None] = []

    def coordinator(request: httpx.Request) -> httpx.Response:
        asked = json.loads(request.content).get("awaiting_round")
        named.append(asked)
        body = {"action": "wait", "retry_after_s": 1.0}
        if asked is not None:
            body["round_outcome"] = outcomes[asked].pop(0)
        return httpx.Response(200, json=body)

    client = Client("http://coord", str(tmp_path), transport=httpx.MockTransport(coordinator))

    # Execute
    for _ in range(4):
        client.check_in()

    # Assert: 5 (pending), then 6 rather than 5 again, then 5; then nothing to ask about.
    # Round 6's content is back once; round 5's committed content is not
    assert named == [5, 6, 5, None]
    np.testing.assert_array_equal(_residual(tmp_path), np.full(SPEC.size, 6.25, np.float32))
    assert DeviceStore(tmp_path).accepted_rounds() == []


def test_a_record_that_never_settles_does_not_hold_back_the_others(tmp_path: Path) -> None:
    # Prepare: three records; round 5's task was refused, so its outcome stays `pending`
    store = DeviceStore(tmp_path)
    for r in (5, 6, 7):
        store.save_accepted(AcceptedUpload(r, _dense(r), SPEC))
    named: list[int | None] = []

    def coordinator(request: httpx.Request) -> httpx.Response:
        asked = json.loads(request.content).get("awaiting_round")
        named.append(asked)
        outcome = "pending" if asked == 5 else "committed"
        return httpx.Response(
            200, json={"action": "wait", "retry_after_s": 1.0, "round_outcome": outcome}
        )

    client = Client("http://coord", str(tmp_path), transport=httpx.MockTransport(coordinator))

    # Execute
    for _ in range(4):
        client.check_in()

    # Assert
    assert named == [5, 6, 7, 5]
    assert DeviceStore(tmp_path).accepted_rounds() == [5]


def test_the_rounds_remembered_as_named_are_only_those_held(tmp_path: Path) -> None:
    # Prepare: a device whose every round commits, one record at a time
    def coordinator(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"action": "wait", "retry_after_s": 1.0, "round_outcome": "committed"}
        )

    client = Client("http://coord", str(tmp_path), transport=httpx.MockTransport(coordinator))

    # Execute
    for r in (5, 6, 7):
        client._core.store.save_accepted(AcceptedUpload(r, _dense(r), SPEC))
        client.check_in()

    # Assert: not every round ever named (the set would grow for the app's life)
    assert client._core._asked == {7}


# -- against a loopback coordinator -----------------------------------------------------------


def test_an_upload_accepted_in_another_task_keeps_a_pending_rounds_record(
    url: str, tmp_path: Path
) -> None:
    # Prepare: task 1 needs both A and B (min_reports 2); only A reports, so its round will be
    # abandoned at its deadline. While that round is still open, A takes part in task 2 (one
    # device per round, commits); then the test passes the deadline on the coordinator's clock
    with httpx.Client(base_url=url) as http:
        t1 = create_task(
            http,
            task_config(
                rounds=2, clients_per_round=2, min_reports=2, deadline_s=DEADLINE_S,
                selection_timeout_s=60,
            ),
        )  # fmt: skip
        t2 = create_task(http, task_config(rounds=2, clients_per_round=1))
    seen = _Bodies()
    a = Client(url, str(tmp_path / "a"), mods=(seen,))
    b = Client(url, str(tmp_path / "b"))
    for c in (a, b):
        c.register()
    x, y = local_data(4)
    first = a.train_round(_assign_all([a, b], t1)[a.device_id], SoftmaxTrainer(), x, y)
    r1 = first.round_id
    sent1 = DeviceStore(tmp_path / "a").load_accepted()  # the only record yet
    assert sent1 is not None and sent1.round_id == r1
    after_first = _residual(tmp_path / "a", TASK_SPEC.size, t1)
    second = a.train_round(await_assignment(a, t2), SoftmaxTrainer(), x, y)
    r2 = second.round_id
    # Round 1 was named in task 2's check-ins and was still pending
    asked = [
        (s.get("awaiting_round"), o.get("round_outcome"))
        for s, o in zip(seen.sent, seen.answers, strict=True)
    ]
    assert (r1, "pending") in asked
    after_second = _residual(tmp_path / "a", TASK_SPEC.size, t2)
    assert DeviceStore(tmp_path / "a").accepted_rounds() == [r1, r2]
    _pass_deadline(url, DEADLINE_S)  # round 1 holds A's report, B sends none
    _await_state(url, r1, "abandoned")
    _await_state(url, r2, "committed")

    # Execute: two check-ins settle the two records (round 2 first: round 1 was asked about
    # last), a third asks nothing
    outcomes = [a.check_in(t2).round_outcome for _ in range(3)]

    # Assert: round 1's content is back in task 1's residual once (before the fix, round 2's
    # record replaced round 1's and round 1's content was lost); round 2's stays delivered, and
    # task 2's residual is untouched (task 1's content is not folded into another task's)
    assert outcomes == ["committed", "abandoned", None]
    content = UpdateCodec(TASK_SPEC, CodecConfig.dense()).decode(sent1.frame).to_dense()
    assert np.count_nonzero(content) > 0
    np.testing.assert_array_equal(
        _residual(tmp_path / "a", TASK_SPEC.size, t1), (after_first + content).astype(np.float32)
    )
    np.testing.assert_array_equal(_residual(tmp_path / "a", TASK_SPEC.size, t2), after_second)
    assert DeviceStore(tmp_path / "a").accepted_rounds() == []
    a.close()
    b.close()
