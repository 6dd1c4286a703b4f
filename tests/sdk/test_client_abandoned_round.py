"""An accepted upload whose round is then abandoned is not lost: the device's next check-in
names the round (`awaiting_round`), the coordinator answers its outcome (`round_outcome`), and
the SDK adds the upload's content back into the residual, as for a refused upload; a committed
round leaves the residual alone. Against a real coordinator on loopback, plain and secure."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from compression import CodecConfig, ModelSpec, UpdateCodec
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import Assignment, CodecParams, TensorShape, TrainingParams
from protocol.secagg import Stage
from sdk import AsyncClient, Client
from sdk.client import SecureRoundReport
from sdk.device_store import DeviceStore
from tests.coordinator.test_service_support import (
    ADMIN,
    SPEC,
    SoftmaxTrainer,
    StageClock,
    await_assignment,
    create_task,
    drive_stages,
    expire_stage,
    local_data,
    task_config,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}


# The app each live `url` fixture serves, by its url: a test moves its coordinator's clocks
# (`_pass_deadline`, `_driven_secure_task`) through it.
_APPS: dict[str, Any] = {}


@pytest.fixture()
def url(tmp_path: Path) -> Iterator[str]:
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    server = ServerThread(cfg)
    with server as served:
        _APPS[served] = server.app
        try:
            yield served
        finally:
            del _APPS[served]


def _coordinator(url: str) -> Any:
    """The coordinator the `url` fixture serves at `url`."""
    return _APPS[url].state.coordinator


def _pass_deadline(url: str, seconds: float) -> None:
    """Move the coordinator's clock `seconds` ahead: a round whose deadline is at most that far
    off closes at the ticker's next look, as at its deadline, without waiting it out."""
    coordinator = _coordinator(url)
    clock = coordinator.clock
    coordinator.clock = lambda: clock() + seconds


def _await_state(url: str, round_id: int, state: str, timeout: float = 20.0) -> None:
    give_up = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers=AUTH) as http:
        while http.get(f"/v1/rounds/{round_id}").json()["state"] != state:
            assert time.monotonic() < give_up, f"round {round_id} never {state}"
            time.sleep(0.02)


def _residual(root: Path, size: int, task_id: int | None = None) -> npt.NDArray[np.float32]:
    """The residual of `task_id` (None: the legacy one) held in `root`."""
    ef = DeviceStore(root).load_residual(size, task_id)
    assert ef is not None
    return ef.residual.copy()


def _sent(root: Path) -> npt.NDArray[np.float32]:
    """The dense content of the device's accepted-upload record."""
    record = DeviceStore(root).load_accepted()
    assert record is not None
    return UpdateCodec(record.spec, CodecConfig.dense()).decode(record.frame).to_dense()


class _Bodies:
    """A client mod that keeps every check-in body sent and every check-in answer."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        response = nxt(request)
        if request.url.path == "/v1/checkin":
            self.sent.append(json.loads(request.content))
            response.read()
            self.answers.append(response.json())
        return response


def _assign_all(clients: list[Client], task_id: int) -> dict[str, Assignment]:
    """Check every client in, round-robin, until each has its assignment."""
    out: dict[str, Assignment] = {}
    give_up = time.monotonic() + 20
    while len(out) < len(clients):
        for c in clients:
            if c.device_id not in out:
                answer = c.check_in(task_id)
                if answer.assignment is not None:
                    out[c.device_id] = answer.assignment
        assert time.monotonic() < give_up, "no assignment"
        time.sleep(0.02)
    return out


# The round deadline of `_abandoning_task`: a test passes it with `_pass_deadline` once the
# round holds the one report it will get, so it never expires on its own before that.
DEADLINE_S = 30.0


def _abandoning_task(http: httpx.Client) -> int:
    # Two devices selected, both needed (min_reports 2): one report abandons at the deadline.
    return create_task(
        http,
        task_config(
            rounds=2, clients_per_round=2, min_reports=2, deadline_s=DEADLINE_S,
            selection_timeout_s=60,
        ),
    )  # fmt: skip


def test_an_abandoned_round_returns_the_accepted_upload_to_the_residual(
    url: str, tmp_path: Path
) -> None:
    # Prepare: A and B are selected; only A uploads (accepted); the round is then abandoned
    with httpx.Client(base_url=url) as http:
        task_id = _abandoning_task(http)
    seen = _Bodies()
    a = Client(url, str(tmp_path / "a"), mods=(seen,))
    b = Client(url, str(tmp_path / "b"))
    for c in (a, b):
        c.register()
    x, y = local_data(1)
    assigned = _assign_all([a, b], task_id)
    report = a.train_round(assigned[a.device_id], SoftmaxTrainer(), x, y)
    assignment = report.round_id
    assert report.receipt.accepted and assigned[b.device_id].round_id == assignment
    after_upload = _residual(tmp_path / "a", SPEC.size, task_id)
    sent = _sent(tmp_path / "a")
    _pass_deadline(url, DEADLINE_S)  # A's report is in, B sends none
    _await_state(url, assignment, "abandoned")

    # Execute: A's next check-in asks about that round; a second one asks nothing
    a.check_in(task_id)
    settled = _residual(tmp_path / "a", SPEC.size, task_id)
    a.check_in(task_id)

    # Assert: the content is back, exactly as a refusal puts it back (residual + decoded
    # frame), i.e. the whole update u = delta + old residual; once, and in memory too
    assert seen.sent[-2] == {
        "task_id": task_id,
        "awaiting_round": assignment,
        "model_version": 0,
        "max_model_bytes": 268435456,
        "features": ["error_feedback_off"],
    }
    assert seen.answers[-2]["round_outcome"] == "abandoned"
    assert "awaiting_round" not in seen.sent[-1] and "round_outcome" not in seen.answers[-1]
    np.testing.assert_array_equal(settled, (after_upload + sent).astype(np.float32))
    np.testing.assert_array_equal(_residual(tmp_path / "a", SPEC.size, task_id), settled)
    np.testing.assert_array_equal(a._core._encoders[task_id].feedback.residual, settled)
    assert np.count_nonzero(sent) > 0
    assert DeviceStore(tmp_path / "a").load_accepted() is None
    a.close()
    b.close()


def test_a_committed_round_leaves_the_residual_alone(url: str, tmp_path: Path) -> None:
    # Prepare: one device, one report commits the round
    with httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(rounds=2, clients_per_round=1))
    seen = _Bodies()
    a = Client(url, str(tmp_path / "a"), mods=(seen,))
    a.register()
    x, y = local_data(2)
    report = a.train_round(await_assignment(a, task_id), SoftmaxTrainer(), x, y)
    after_upload = _residual(tmp_path / "a", SPEC.size, task_id)
    _await_state(url, report.round_id, "committed")

    # Execute
    a.check_in(task_id)

    # Assert
    assert seen.sent[-1]["awaiting_round"] == report.round_id
    assert seen.answers[-1]["round_outcome"] == "committed"
    np.testing.assert_array_equal(_residual(tmp_path / "a", SPEC.size, task_id), after_upload)
    assert DeviceStore(tmp_path / "a").load_accepted() is None
    a.close()


def test_the_async_client_returns_an_abandoned_upload_the_same_way(
    url: str, tmp_path: Path
) -> None:
    # Prepare
    with httpx.Client(base_url=url) as http:
        task_id = _abandoning_task(http)
    x, y = local_data(3)

    async def scenario() -> tuple[int, int]:
        a = AsyncClient(url, str(tmp_path / "a"))
        b = AsyncClient(url, str(tmp_path / "b"))
        try:
            await asyncio.gather(a.register(), b.register())
            assignments: dict[str, Assignment] = {}
            while len(assignments) < 2:
                for c in (a, b):
                    if c.device_id not in assignments:
                        answer = await c.check_in(task_id)
                        if answer.assignment is not None:
                            assignments[c.device_id] = answer.assignment
                await asyncio.sleep(0.05)
            report = await a.train_round(assignments[a.device_id], SoftmaxTrainer(), x, y)
            return report.round_id, task_id
        finally:
            await asyncio.gather(a.aclose(), b.aclose())

    round_id, _ = asyncio.run(scenario())
    after_upload = _residual(tmp_path / "a", SPEC.size, task_id)
    sent = _sent(tmp_path / "a")
    _pass_deadline(url, DEADLINE_S)  # A's report is in, B sends none
    _await_state(url, round_id, "abandoned")

    # Execute
    async def check_in() -> str | None:
        async with AsyncClient(url, str(tmp_path / "a")) as again:  # a restarted app
            return (await again.check_in(task_id)).round_outcome

    outcome = asyncio.run(check_in())

    # Assert
    assert outcome == "abandoned"
    np.testing.assert_array_equal(
        _residual(tmp_path / "a", SPEC.size, task_id), (after_upload + sent).astype(np.float32)
    )
    assert DeviceStore(tmp_path / "a").load_accepted() is None


def test_a_coordinator_that_ignores_the_field_leaves_the_record_waiting(tmp_path: Path) -> None:
    # Prepare: a record of round 5, and an older coordinator that answers without an outcome
    root = tmp_path / "a"
    store = DeviceStore(root)
    from sdk.device_store import AcceptedUpload

    frame, _ = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=8)).encode(
        np.ones(SPEC.size, np.float32), np.random.default_rng(0), weight=1.0
    )
    store.save_accepted(AcceptedUpload(5, frame, SPEC))
    bodies: list[bytes] = []

    def old(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 1.0})

    client = Client("http://coord", str(root), transport=httpx.MockTransport(old))

    # Execute
    answer = client.check_in(3)
    client.check_in(3)

    # Assert: asked each time, nothing settled (the record stays, no residual written)
    assert answer.round_outcome is None
    sent = {
        "task_id": 3,
        "awaiting_round": 5,
        "max_model_bytes": 268435456,
        "features": ["error_feedback_off"],
    }
    assert [json.loads(b) for b in bodies] == [sent] * 2
    record = DeviceStore(root).load_accepted()
    assert record is not None and record.round_id == 5
    assert DeviceStore(root).load_residual(SPEC.size) is None


@pytest.mark.parametrize(
    ("outcome", "kept", "returned"),
    [
        ("pending", True, False),
        ("something-newer", True, False),
        ("committed", False, False),
        ("abandoned", False, True),
        ("excluded", False, True),
        ("unknown", False, True),
    ],
)
def test_each_outcome_is_acted_on(tmp_path: Path, outcome: str, kept: bool, returned: bool) -> None:
    # Prepare: a record of round 5 holding ones, and a residual of 0.25
    from compression import ErrorFeedback
    from sdk.device_store import AcceptedUpload

    root = tmp_path / "a"
    store = DeviceStore(root)
    ef = ErrorFeedback(SPEC.size)
    ef.residual[:] = 0.25
    frame, _ = UpdateCodec(SPEC, CodecConfig.dense()).encode(
        np.ones(SPEC.size, np.float32), np.random.default_rng(0), weight=1.0
    )
    store.save_accepted(AcceptedUpload(5, frame, SPEC), ef)

    def answer(request: httpx.Request) -> httpx.Response:
        body = {"action": "wait", "retry_after_s": 1.0, "round_outcome": outcome}
        return httpx.Response(200, json=body)

    client = Client("http://coord", str(root), transport=httpx.MockTransport(answer))

    # Execute
    client.check_in()

    # Assert
    assert (DeviceStore(root).load_accepted() is not None) is kept
    want = 1.25 if returned else 0.25
    np.testing.assert_array_equal(_residual(root, SPEC.size), np.full(SPEC.size, want, np.float32))


# -- secure rounds ---------------------------------------------------------------------------

SECURE_SPEC = ModelSpec.from_shapes([("w", (4, 8)), ("b", (4,))])


# The stage timeout of a secure task whose stages time out only on the test's clock
# (`_driven_secure_task`, `_expire_stage`), or that no stage is meant to reach. One wall-clock
# timeout must both expire (a stage a silent device skips) and not expire (a stage every device
# uploads, which closes once all did); at 1.5 s, CI (a loaded 2-core runner, three xdist
# workers) saw such a stage close before the last upload landed (stop 34: test_h55_lost_answer's
# round abandoned at masked-input). No caller waits a stage out on the wall clock any more.
STAGE_TIMEOUT_S = 60.0


def _secure_task(
    http: httpx.Client, cohort: int = 3, stage_timeout_s: float = STAGE_TIMEOUT_S
) -> int:
    from compression import encode_snapshot
    from protocol.messages import TaskConfig, to_json

    cfg = TaskConfig(
        name="abandon", model_name="tiny",
        spec=[TensorShape(e.name, list(e.shape)) for e in SECURE_SPEC.entries],
        rounds=2, clients_per_round=cohort, over_selection=1.0, min_reports=3,
        selection_timeout_s=60.0, deadline_s=30.0, downlink=CodecParams(topk=1.0, bits=32),
        training=TrainingParams(1, 8, 0.1), retry_after_s=0.2,
        secure={"coord_fraction": 0.5, "stage_timeout_s": stage_timeout_s},
    )  # fmt: skip
    task_id = int(http.post("/v1/admin/tasks", json=to_json(cfg), headers=AUTH).json()["task_id"])
    snap = encode_snapshot(np.zeros(SECURE_SPEC.size, np.float32), SECURE_SPEC, "fp32")
    r = http.put(
        f"/v1/admin/tasks/{task_id}/model",
        content=snap,
        headers={**AUTH, "content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    return task_id


def _driven_secure_task(url: str, cohort: int = 3) -> tuple[int, StageClock]:
    """`_secure_task` (stage timeout STAGE_TIMEOUT_S) on the `url` fixture's coordinator, its
    stages timed by a `StageClock`: a stage closes early once every device uploaded, and times
    out only when the test moves the clock (`_expire_stage`). Set before any device checks in,
    so before the task's first round opens."""
    with httpx.Client(base_url=url) as http:
        task_id = _secure_task(http, cohort, STAGE_TIMEOUT_S)
    return task_id, drive_stages(_coordinator(url), task_id)


def _expire_stage(
    url: str,
    task_id: int,
    clock: StageClock,
    stage: Stage,
    uploads: int,
    silent: Sequence[threading.Thread] = (),
) -> None:
    """`expire_stage` on the `url` fixture's coordinator: time out `stage` once it holds all it
    will get (`uploads`, every thread in `silent` ended)."""
    expire_stage(_coordinator(url), task_id, clock, stage, uploads, silent)


def test_a_secure_round_abandoned_after_the_masked_inputs_returns_them(
    url: str, tmp_path: Path
) -> None:
    # Prepare: three devices send their masked inputs, then all go silent before unmask, so
    # the round cannot be unmasked and is abandoned when the unmask stage times out
    task_id, clock = _driven_secure_task(url)
    clients = [Client(url, str(tmp_path / f"s{i}")) for i in range(3)]
    for c in clients:
        c.register()
    deltas = [np.full(SECURE_SPEC.size, 0.1 * (i + 1), np.float32) for i in range(3)]
    reports: list[SecureRoundReport | None] = [None] * 3

    def run(i: int) -> None:
        a = await_assignment(clients[i], task_id)
        reports[i] = clients[i].secure_round(
            a, lambda p, i=i: (deltas[i], 8, 0.0), drop_at=Stage.UNMASK
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    r0 = reports[0]
    assert r0 is not None and "masked-input" in r0.stages and not r0.completed
    after = _residual(tmp_path / "s0", SECURE_SPEC.size, task_id)
    assert not np.allclose(after, deltas[0])  # a part of u was sent
    sent = _sent(tmp_path / "s0")
    _expire_stage(url, task_id, clock, Stage.UNMASK, 0)
    _await_state(url, r0.round_id, "abandoned")

    # Execute
    answer = clients[0].check_in(task_id)

    # Assert: what the masked input stood for is back: residual = u (delta + old residual 0)
    assert answer.round_outcome == "abandoned"
    settled = _residual(tmp_path / "s0", SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(settled, (after + sent).astype(np.float32))
    np.testing.assert_allclose(settled, deltas[0], atol=1e-6)
    participant = clients[0]._core.secure_participant(SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(participant.residual, settled)
    for c in clients:
        c.close()


def test_a_410_after_the_masked_input_returns_it_at_once(url: str, tmp_path: Path) -> None:
    # Prepare: device 0's network answers its masked-input download with the 410 of an aborted
    # round (injected by a mod; the others run the round normally). Every stage closes once
    # all three uploaded: none is meant to time out
    with httpx.Client(base_url=url) as http:
        task_id = _secure_task(http)

    def aborts(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        if request.method == "GET" and request.url.path.endswith("/stages/masked-input"):
            return httpx.Response(410, json={"reason": "round_closed", "detail": "aborted"})
        return nxt(request)

    clients = [Client(url, str(tmp_path / "v"), mods=(aborts,))]
    clients += [Client(url, str(tmp_path / f"o{i}")) for i in range(2)]
    for c in clients:
        c.register()
    delta = np.full(SECURE_SPEC.size, 0.2, np.float32)
    reports: list[SecureRoundReport | None] = [None] * 3

    def run(i: int) -> None:
        a = await_assignment(clients[i], task_id)
        reports[i] = clients[i].secure_round(a, lambda p: (delta, 8, 0.0))

    # Execute
    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    # Assert: the input was taken, then the round "aborted": its content is back in the
    # residual (the whole delta), saved, and nothing is left to ask about
    r0 = reports[0]
    assert r0 is not None and "masked-input" in r0.stages and not r0.completed
    assert "aborted" in r0.detail
    np.testing.assert_allclose(
        _residual(tmp_path / "v", SECURE_SPEC.size, task_id), delta, atol=1e-6
    )
    assert DeviceStore(tmp_path / "v").load_accepted() is None
    for c in clients:
        c.close()


def test_a_secure_round_that_drops_a_device_tells_it_excluded(url: str, tmp_path: Path) -> None:
    # Prepare: five devices; device 2 goes silent before its masked input, and the round
    # commits without it.
    # Device 2 then asks about the round (as a device whose input the coordinator took but
    # left out of the sum would: a record of that round, here holding ones)
    from sdk.device_store import AcceptedUpload

    task_id, clock = _driven_secure_task(url, cohort=5)
    clients = [Client(url, str(tmp_path / f"x{i}")) for i in range(5)]
    for c in clients:
        c.register()
    drops = [None, None, Stage.MASKED_INPUT, None, None]
    reports: list[SecureRoundReport | None] = [None] * 5

    def run(i: int) -> None:
        a = await_assignment(clients[i], task_id)
        delta = np.full(SECURE_SPEC.size, 0.1, np.float32)
        reports[i] = clients[i].secure_round(a, lambda p: (delta, 8, 0.0), drop_at=drops[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    _expire_stage(url, task_id, clock, Stage.MASKED_INPUT, 4, silent=[threads[2]])
    for t in threads:
        t.join(60)
    r0 = reports[0]
    assert r0 is not None and r0.completed
    _await_state(url, r0.round_id, "committed")
    frame, _ = UpdateCodec(SECURE_SPEC, CodecConfig.dense()).encode(
        np.ones(SECURE_SPEC.size, np.float32), np.random.default_rng(0), weight=0.0
    )
    DeviceStore(tmp_path / "x2").save_accepted(AcceptedUpload(r0.round_id, frame, SECURE_SPEC))
    assert DeviceStore(tmp_path / "x2").load_residual(SECURE_SPEC.size) is None  # never sent

    # Execute
    left_out = clients[2].check_in(task_id).round_outcome
    inside = clients[0].check_in(task_id).round_outcome

    # Assert: device 2 is in the round's dropped list, so excluded (and its content returns);
    # device 0's input is in the published sum
    assert (left_out, inside) == ("excluded", "committed")
    np.testing.assert_array_equal(
        _residual(tmp_path / "x2", SECURE_SPEC.size), np.ones(SECURE_SPEC.size, np.float32)
    )
    for c in clients:
        c.close()
