"""A task with DP tells its devices to drop, not return, an upload its round did not take.

The privacy reviewer's F1 (notes s25/dp): with error feedback on, a straggler refused because
the round already had its `target` reports put its whole update back into its residual, so it
went out with that device's next report. Which device is refused depends on arrival order, so
on devices' data: changing device X's data changed device Y's next report, and a round's
clipped sum moved by 4C while the accounting (replace-one) assumes 2C. Now a task with a `dp`
stage (or secure noise) sends `"return_refused": false` in its assignments, and the SDK drops
such an upload as if delivered (the residual stays what acceptance leaves); `plume sim` does
the same for a run with a dp stage. Tasks without DP are unchanged.

The two-worlds test runs three SDK clients against the real coordinator service (RoundEngine,
DPMean with population=3,sample=3 and tiny seeded noise, the SDK encoder and store): before the
rule the round-2 sums of the two worlds are 4C apart (4.0), with it 2C (2.0).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from compression import CodecConfig, ModelSpec, encode_snapshot
from coordinator.aggregators import build_aggregator
from coordinator.aggregators._dp import returns_refused
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import (
    Assignment,
    CodecParams,
    MessageError,
    TaskConfig,
    TensorShape,
    TrainingParams,
    from_json,
    to_json,
)
from sdk import Client, TrainResult
from sdk.client import ClientError
from sdk.device import UpdateEncoder
from sdk.device_store import AcceptedUpload, DeviceStore, PendingUpload

from .test_service_support import drive_stages, expire_stage

ADMIN = "test-admin-token"
AUTH = {"authorization": f"Bearer {ADMIN}"}
SPEC = ModelSpec.from_shapes([("w", (2,))])
LOSSLESS = CodecParams(topk=1.0, bits=32)
C = 1.0
# Three devices, all selected (population = sample = the selected cohort), noise z = 0.001 on
# the clipped sum (standard deviation 0.001 C a coordinate), seeded so that runs repeat.
DP = "dp:clip=1,z=0.001,population=3,sample=3,delta=1e-5,seed=7+fedavg"
NOISE_TOL = 0.05  # 50 standard deviations of the two worlds' noise difference


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[ServerThread]:
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"),
        admin_token=ADMIN,
        poll_s=0.05,
        tick_s=0.02,
        allow_seeded_dp=True,
    )
    thread = ServerThread(cfg)
    with thread:
        yield thread


@pytest.fixture()
def url(served: ServerThread) -> str:
    return served.url


class FixedDelta:
    """A trainer whose update is a given delta, whatever the data: trained = params + delta."""

    def __init__(self) -> None:
        self.delta = np.zeros(SPEC.size, np.float32)
        self.seen: list[npt.NDArray[np.float32]] = []

    def train(
        self,
        params: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> TrainResult:
        self.seen.append(params.copy())
        return TrainResult((params + self.delta).astype(np.float32), len(x), 0.0)


class Answers:
    """A client mod that keeps every check-in answer's JSON."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        response = nxt(request)
        if request.url.path == "/v1/checkin":
            response.read()
            self.answers.append(json.loads(response.content))
        return response


def _task(url: str, aggregator: str, **over: Any) -> int:
    fields: dict[str, Any] = {
        "name": "h259",
        "model_name": "w2",
        "spec": [TensorShape("w", [2])],
        "rounds": 3,
        "clients_per_round": 2,
        "over_selection": 1.5,  # 3 selected, the first 2 reports kept
        "deadline_s": 60.0,
        "min_reports": 1,
        "selection_timeout_s": 60.0,
        "codec": LOSSLESS,
        "downlink": LOSSLESS,
        "aggregator": aggregator,
        "training": TrainingParams(local_epochs=1, batch_size=4, lr=0.1),
        "retry_after_s": 0.05,
    }
    fields.update(over)
    with httpx.Client(base_url=url, headers=AUTH) as http:
        r = http.post("/v1/admin/tasks", json=to_json(TaskConfig(**fields)))
        assert r.status_code == 201, r.text
        task_id = int(r.json()["task_id"])
        r = http.put(
            f"/v1/admin/tasks/{task_id}/model",
            content=encode_snapshot(np.zeros(SPEC.size, np.float32), SPEC, "fp32"),
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 200, r.text
    return task_id


def _assign_all(clients: dict[str, Client], task_id: int) -> dict[str, Assignment]:
    """Check every client in, round-robin, until each has its assignment of one round."""
    out: dict[str, Assignment] = {}
    give_up = time.monotonic() + 30
    while len(out) < len(clients):
        for name, c in clients.items():
            if name not in out:
                answer = c.check_in(task_id)
                if answer.assignment is not None:
                    out[name] = answer.assignment
        assert time.monotonic() < give_up, "no assignment"
        time.sleep(0.02)
    assert len({a.round_id for a in out.values()}) == 1
    return out


def _await_state(url: str, round_id: int, state: str) -> None:
    give_up = time.monotonic() + 30
    with httpx.Client(base_url=url, headers=AUTH) as http:
        while http.get(f"/v1/rounds/{round_id}").json()["state"] != state:
            assert time.monotonic() < give_up, f"round {round_id} never {state}"
            time.sleep(0.02)


def _residual(root: Path, task_id: int) -> npt.NDArray[np.float32]:
    ef = DeviceStore(root).load_residual(SPEC.size, task_id)
    return np.zeros(SPEC.size, np.float32) if ef is None else ef.residual.copy()


XY = (np.zeros((4, 2), np.float32), np.zeros(4, np.int64))


def _round(
    clients: dict[str, Client],
    trainers: dict[str, FixedDelta],
    task_id: int,
    fresh: dict[str, list[float]],
    order: list[str],
) -> tuple[dict[str, Assignment], list[str]]:
    """One round: every device is assigned, then trains and uploads in `order`; the names of
    those refused (stragglers: the round already had its target reports)."""
    assigned = _assign_all(clients, task_id)
    refused = []
    for name in order:
        trainers[name].delta = np.array(fresh[name], np.float32)
        try:
            clients[name].train_round(assigned[name], trainers[name], *XY)
        except ClientError as exc:
            assert exc.reason == "round_closed", exc
            refused.append(name)
    return assigned, refused


def _world(
    url: str, root: Path, aggregator: str, x_first: bool, x_round2: list[float]
) -> dict[str, Any]:
    """F1's scenario. Round 1: X = [1, 0], Y = [2, 0], Z = 0; X arrives first (world A, Y is
    the straggler) or last (world B, X is). Round 2: X = `x_round2`, Y = [-1, 0], Z = 0, in the
    order X, Y, Z (Z the straggler). Returns each round's released sum (model step x 2
    reports), the refused devices and assignment answers, and the residuals after round 1."""
    task_id = _task(url, aggregator)
    seen = Answers()
    clients = {n: Client(url, str(root / n), mods=(seen,)) for n in "XYZ"}
    trainers = {n: FixedDelta() for n in "XYZ"}
    for c in clients.values():
        c.register()
    r1 = {"X": [1.0, 0.0], "Y": [2.0, 0.0], "Z": [0.0, 0.0]}
    a1, refused1 = _round(
        clients, trainers, task_id, r1, ["X", "Z", "Y"] if x_first else ["Y", "Z", "X"]
    )
    round1 = next(iter(a1.values())).round_id
    _await_state(url, round1, "committed")
    residuals = {n: _residual(root / n, task_id) for n in "XYZ"}
    pending = {n: DeviceStore(root / n).load_pending() for n in "XYZ"}
    r2 = {"X": x_round2, "Y": [-1.0, 0.0], "Z": [0.0, 0.0]}
    a2, refused2 = _round(clients, trainers, task_id, r2, ["X", "Y", "Z"])
    round2 = next(iter(a2.values())).round_id
    _await_state(url, round2, "committed")
    params1 = trainers["X"].seen[-1]  # the model round 2 trained from
    params2, _, _ = clients["X"].fetch_current(task_id, SPEC)
    for c in clients.values():
        c.close()
    return {
        "sum1": params1 * 2,  # the initial model is zero
        "sum2": (params2 - params1) * 2,
        "refused": (refused1, refused2),
        "residuals": residuals,
        "pending": pending,
        "assignments": [a for a in seen.answers if a.get("assignment")],
        "a1": a1,
    }


def test_a_dp_task_drops_a_stragglers_upload_so_round_two_moves_by_at_most_2c(
    url: str, tmp_path: Path
) -> None:
    # Prepare + Execute: the two neighbouring fleets differ only in X's data (and through it
    # X's arrival: first in world A, last in B)
    a = _world(url, tmp_path / "a", DP, x_first=True, x_round2=[1.0, 0.0])
    b = _world(url, tmp_path / "b", DP, x_first=False, x_round2=[-2.0, 0.0])

    # Assert: round 1 swapped Y (A) and X (B) for a slot, as F1 has it
    assert a["refused"] == (["Y"], ["Z"]) and b["refused"] == (["X"], ["Z"])
    assert float(np.linalg.norm(a["sum1"] - b["sum1"])) <= NOISE_TOL
    # The refused device kept no pending upload and the residual acceptance leaves (zero under
    # a lossless codec), not its refused update ([2, 0] for Y, [1, 0] for X before the rule)
    for world, late in ((a, "Y"), (b, "X")):
        assert world["pending"][late] is None
        np.testing.assert_array_equal(world["residuals"][late], np.zeros(2, np.float32))
    # Round 2: A releases clip([1,0]) + clip([-1,0]) = 0, B clip([-2,0]) + clip([-1,0]) =
    # [-2, 0]: 2C apart, the replace-one sensitivity accounted. Returned, the refused updates
    # made them [2, 0] and [-2, 0]: 4C apart.
    gap = float(np.linalg.norm(a["sum2"] - b["sum2"]))
    assert gap <= 2 * C + NOISE_TOL, (a["sum2"], b["sum2"])
    np.testing.assert_allclose(a["sum2"], [0.0, 0.0], atol=NOISE_TOL)
    np.testing.assert_allclose(b["sum2"], [-2.0, 0.0], atol=NOISE_TOL)
    # Every assignment said so on the wire, and the SDK parsed it
    assert a["assignments"] and all(
        ans["assignment"]["return_refused"] is False for ans in a["assignments"]
    )
    assert all(x.return_refused is False for x in a["a1"].values())


def test_a_task_without_dp_still_returns_a_stragglers_upload(url: str, tmp_path: Path) -> None:
    # Prepare + Execute: world A of the scenario, the same task without its dp stage
    world = _world(url, tmp_path, "fedavg:uniform=1", x_first=True, x_round2=[1.0, 0.0])

    # Assert: the straggler Y put its whole refused update back into its residual (as before),
    # and round 2 carried it: X [1, 0] + Y ([-1, 0] + [2, 0]) = [2, 0], the mean [1, 0] x 2
    assert world["refused"] == (["Y"], ["Z"])
    np.testing.assert_array_equal(world["residuals"]["Y"], np.array([2.0, 0.0], np.float32))
    np.testing.assert_allclose(world["sum2"], [2.0, 0.0], atol=1e-6)
    # The assignment is the bytes it was: no return_refused key
    assert world["assignments"]
    assert all("return_refused" not in ans["assignment"] for ans in world["assignments"])
    assert all(x.return_refused is None for x in world["a1"].values())


def test_a_dp_tasks_abandoned_round_drops_the_accepted_upload(
    served: ServerThread, tmp_path: Path
) -> None:
    # Prepare: two devices, both needed (min_reports 2); only A uploads, then the round's
    # deadline passes
    url = served.url
    deadline_s = 30.0
    task_id = _task(
        url,
        "dp:clip=1,z=0.001,population=2,sample=2,delta=1e-5,seed=7+fedavg",
        clients_per_round=2,
        over_selection=1.0,
        min_reports=2,
        deadline_s=deadline_s,
    )
    seen = Answers()
    clients = {
        "A": Client(url, str(tmp_path / "A"), mods=(seen,)),
        "B": Client(url, str(tmp_path / "B")),
    }
    for c in clients.values():
        c.register()
    assigned = _assign_all(clients, task_id)
    trainer = FixedDelta()
    trainer.delta = np.array([0.5, -0.25], np.float32)
    report = clients["A"].train_round(assigned["A"], trainer, *XY)
    assert report.receipt.accepted
    assert DeviceStore(tmp_path / "A").load_accepted() is not None
    # The deadline passes on the coordinator's clock (its ticker abandons the round there),
    # without waiting it out
    coordinator = served.app.state.coordinator
    real_clock = coordinator.clock
    coordinator.clock = lambda: real_clock() + deadline_s
    _await_state(url, report.round_id, "abandoned")

    # Execute: A's next check-in asks about the round and hears "abandoned"
    clients["A"].check_in(task_id)

    # Assert: the record is forgotten and nothing went back (before: the residual became the
    # upload's content, [0.5, -0.25])
    assert seen.answers[-1]["round_outcome"] == "abandoned"
    assert DeviceStore(tmp_path / "A").load_accepted() is None
    np.testing.assert_array_equal(_residual(tmp_path / "A", task_id), np.zeros(2, np.float32))
    np.testing.assert_array_equal(
        clients["A"]._core._encoders[task_id].feedback.residual, np.zeros(2, np.float32)
    )
    for c in clients.values():
        c.close()


# -- the field on the wire and in the app directory ------------------------------------------


def _assignment(**over: Any) -> Assignment:
    return Assignment(
        task_id=1,
        round_id=2,
        base_version=0,
        model_name="w2",
        spec=[TensorShape("w", [2])],
        codec=LOSSLESS,
        training=TrainingParams(),
        deadline_unix=1.5,
        model_path="/m",
        upload_path="/u",
        max_upload_bytes=100,
        seed=0,
        **over,
    )


def test_return_refused_round_trips_and_is_left_out_by_default() -> None:
    # Execute + Assert: False is sent and read back; None is left out (the bytes before)
    sent = to_json(_assignment(return_refused=False))
    assert sent["return_refused"] is False
    assert from_json(Assignment, sent).return_refused is False
    assert "return_refused" not in to_json(_assignment())
    assert from_json(Assignment, to_json(_assignment())).return_refused is None
    # Only a JSON boolean or null is taken
    with pytest.raises(MessageError):
        from_json(Assignment, {**sent, "return_refused": "no"})


def test_the_rule_is_a_dp_stage() -> None:
    assert returns_refused(build_aggregator("fedavg"))
    assert returns_refused(build_aggregator("median"))
    assert not returns_refused(build_aggregator(DP))
    assert not returns_refused(build_aggregator("dp:clip=1,z=1+fedavg"))  # not accounted
    assert not returns_refused(build_aggregator("adam:lr=0.1+" + DP))


def _frame(delta: list[float]) -> tuple[bytes, npt.NDArray[np.float32]]:
    enc = UpdateEncoder(SPEC, CodecConfig(topk=1.0, bits=32))
    frame, _ = enc.encode(np.array(delta, np.float32), np.random.default_rng(0), weight=1.0)
    return frame, enc.feedback.residual


def test_the_setting_is_kept_with_the_pending_upload_and_the_record(tmp_path: Path) -> None:
    # Prepare: a pending upload of a DP task, saved; then a restarted app reads it back
    store = DeviceStore(tmp_path)
    frame, _ = _frame([0.5, 0.5])
    enc = UpdateEncoder(SPEC, CodecConfig(topk=1.0, bits=32))
    pending = PendingUpload(3, "k1", frame, SPEC.dense_bytes, SPEC, 4, return_refused=False)
    store.save_pending(pending, enc.feedback)
    meta = json.loads((tmp_path / "pending.json").read_text())
    assert meta["return_refused"] is False

    # Execute + Assert: it loads with the setting; accepted, its record keeps it
    loaded = DeviceStore(tmp_path).load_pending()
    assert loaded is not None and loaded.return_refused is False
    DeviceStore(tmp_path).accept_pending(loaded)
    record = DeviceStore(tmp_path).load_accepted(3)
    assert record is not None and record.return_refused is False
    assert json.loads((tmp_path / "accepted-3.json").read_text())["return_refused"] is False
    # An older SDK's files (no key) load as returning, as they always did
    DeviceStore(tmp_path).save_accepted(AcceptedUpload(5, frame, SPEC, 4))
    assert "return_refused" not in json.loads((tmp_path / "accepted-5.json").read_text())
    older = DeviceStore(tmp_path).load_accepted(5)
    assert older is not None and older.return_refused is True


def test_a_resumed_pending_upload_of_a_dp_task_refused_for_good_is_dropped(
    tmp_path: Path,
) -> None:
    # Prepare: the app directory holds a DP task's pending upload (residual zero, lossless);
    # a restarted client re-sends it and the coordinator answers round_closed
    enc = UpdateEncoder(SPEC, CodecConfig(topk=1.0, bits=32))
    frame, _ = enc.encode(np.array([0.5, 0.5], np.float32), np.random.default_rng(0), 1.0)
    pending = PendingUpload(3, "k1", frame, SPEC.dense_bytes, SPEC, 4, return_refused=False)
    DeviceStore(tmp_path).save_pending(pending, enc.feedback)
    closed = {"reason": "round_closed", "detail": "round 3 is closed"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json=closed)

    client = Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(handler), retries=0
    )

    # Execute: refused, it is settled (resume_pending answers None then)
    assert client.resume_pending() is None

    # Assert: dropped, not returned (before: the residual became [0.5, 0.5])
    assert DeviceStore(tmp_path).load_pending() is None
    held = DeviceStore(tmp_path).load_residual(SPEC.size, 4)
    assert held is not None
    np.testing.assert_array_equal(held.residual, np.zeros(2, np.float32))
    client.close()


# -- plume sim follows the same rule ---------------------------------------------------------


def _sim_settles(monkeypatch: pytest.MonkeyPatch, aggregator: str) -> dict[str, int]:
    """How many uploads an in-process `plume sim` run (3 of 6 devices selected, the first 2
    reports kept: one straggler a round) returned (`refused`) and dropped (`dropped`)."""
    from dataclasses import replace

    from mobile_sim.runner import SimConfig, run_simulation

    counts = {"refused": 0, "dropped": 0}
    for name in counts:
        original = getattr(UpdateEncoder, name)

        def spy(self: UpdateEncoder, _name: str = name, _original: Any = original) -> None:
            counts[_name] += 1
            _original(self)

        monkeypatch.setattr(UpdateEncoder, name, spy)
    cfg = SimConfig(
        dataset="digits",
        model="digits_mlp",
        clients=6,
        per_round=2,
        over_selection=1.5,
        rounds=2,
        topk=0.1,
        local_epochs=1,
        batch_size=10,
        lr=0.2,
        partition="iid",
        seed=4,
        fleet="timing",
    )
    result = run_simulation(replace(cfg, aggregator=aggregator), progress=False)
    assert [r.reports for r in result.records] == [2, 2]
    return counts


def test_plume_sim_drops_a_stragglers_upload_in_a_dp_run(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = _sim_settles(monkeypatch, "dp:clip=1,z=1,population=3,sample=3,seed=0+fedavg")
    assert counts == {"refused": 0, "dropped": 2}  # one straggler in each of 2 rounds


def test_plume_sim_still_returns_a_stragglers_upload_without_dp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = _sim_settles(monkeypatch, "fedavg")
    assert counts == {"refused": 2, "dropped": 0}


# -- secure tasks with distributed DP: the SDK's records follow the same rule -----------------

SECURE_SPEC = ModelSpec.from_shapes([("w", (4, 8)), ("b", (4,))])
# Never reached: a stage every device uploads closes at once, and the one stage a test means
# to time out is timed out by the test's clock (`expire_stage`)
STAGE_TIMEOUT_S = 60.0


def _secure_dp_task(url: str, stage_timeout_s: float) -> int:
    cfg = TaskConfig(
        name="h259-secure", model_name="tiny",
        spec=[TensorShape(e.name, list(e.shape)) for e in SECURE_SPEC.entries],
        rounds=2, clients_per_round=3, over_selection=1.0, min_reports=3,
        selection_timeout_s=60.0, deadline_s=30.0, downlink=CodecParams(topk=1.0, bits=32),
        training=TrainingParams(1, 8, 0.1), retry_after_s=0.2,
        secure={
            "coord_fraction": 0.5, "stage_timeout_s": stage_timeout_s,
            "noise": "discrete_gaussian", "noise_multiplier": 1.0,
        },
    )  # fmt: skip
    with httpx.Client(base_url=url, headers=AUTH) as http:
        r = http.post("/v1/admin/tasks", json=to_json(cfg))
        assert r.status_code == 201, r.text
        task_id = int(r.json()["task_id"])
        r = http.put(
            f"/v1/admin/tasks/{task_id}/model",
            content=encode_snapshot(np.zeros(SECURE_SPEC.size, np.float32), SECURE_SPEC, "fp32"),
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 200, r.text
    return task_id


def _secure_round(
    clients: list[Client], task_id: int, delta: npt.NDArray[np.float32], drop_at: Any = None
) -> tuple[list[Any], list[Assignment]]:
    import threading

    reports: list[Any] = [None] * len(clients)
    assigned: list[Any] = [None] * len(clients)

    def run(i: int) -> None:
        give_up = time.monotonic() + 30
        while (answer := clients[i].check_in(task_id)).assignment is None:
            assert time.monotonic() < give_up
            time.sleep(0.02)
        assigned[i] = answer.assignment
        reports[i] = clients[i].secure_round(
            answer.assignment, lambda p: (delta, 1, 0.0), drop_at=drop_at
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return reports, assigned


def test_a_secure_dp_round_abandoned_after_the_masked_inputs_drops_them(
    served: ServerThread, tmp_path: Path
) -> None:
    # Prepare: three devices send their masked inputs, then all go silent before unmask: the
    # round is abandoned when the unmask stage times out (on the test's clock, once the
    # devices are gone; the stages they all upload close at once)
    from protocol.secagg import Stage

    url = served.url
    task_id = _secure_dp_task(url, stage_timeout_s=STAGE_TIMEOUT_S)
    coordinator = served.app.state.coordinator
    clock = drive_stages(coordinator, task_id)
    clients = [Client(url, str(tmp_path / f"s{i}")) for i in range(3)]
    for c in clients:
        c.register()
    delta = np.full(SECURE_SPEC.size, 0.1, np.float32)
    reports, assigned = _secure_round(clients, task_id, delta, drop_at=Stage.UNMASK)
    expire_stage(coordinator, task_id, clock, Stage.UNMASK, 0)
    r0 = reports[0]
    assert r0 is not None and "masked-input" in r0.stages and not r0.completed
    assert all(a.secure and a.return_refused is False for a in assigned)
    store = DeviceStore(tmp_path / "s0")
    left = store.load_residual(SECURE_SPEC.size, task_id)
    assert left is not None and not np.allclose(left.residual, delta)  # a part of u was sent
    assert store.load_accepted(r0.round_id) is not None
    _await_state(url, r0.round_id, "abandoned")

    # Execute
    answer = clients[0].check_in(task_id)

    # Assert: the record is forgotten and the residual is the one the input left (before: the
    # input's content was added back, the residual became u = delta)
    assert answer.round_outcome == "abandoned"
    assert DeviceStore(tmp_path / "s0").load_accepted() is None
    settled = DeviceStore(tmp_path / "s0").load_residual(SECURE_SPEC.size, task_id)
    assert settled is not None
    np.testing.assert_array_equal(settled.residual, left.residual)
    participant = clients[0]._core.secure_participant(SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(participant.residual, left.residual)
    for c in clients:
        c.close()


def test_a_secure_dp_round_aborted_after_the_masked_input_drops_it(
    url: str, tmp_path: Path
) -> None:
    # Prepare: device 0's network answers its masked-input download with the 410 of an aborted
    # round (injected by a mod; the others run the round normally)
    task_id = _secure_dp_task(url, stage_timeout_s=STAGE_TIMEOUT_S)
    kept: list[npt.NDArray[np.float32]] = []

    def aborts(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        if request.method == "GET" and request.url.path.endswith("/stages/masked-input"):
            held = DeviceStore(tmp_path / "v").load_residual(SECURE_SPEC.size, task_id)
            assert held is not None
            kept.append(held.residual.copy())  # the residual the input left, saved before
            return httpx.Response(410, json={"reason": "round_closed", "detail": "aborted"})
        return nxt(request)

    clients = [Client(url, str(tmp_path / "v"), mods=(aborts,))]
    clients += [Client(url, str(tmp_path / f"o{i}")) for i in range(2)]
    for c in clients:
        c.register()
    delta = np.full(SECURE_SPEC.size, 0.2, np.float32)

    # Execute
    reports, _ = _secure_round(clients, task_id, delta)

    # Assert: taken, then "aborted": dropped (before: the whole delta was back in the residual)
    r0 = reports[0]
    assert r0 is not None and "masked-input" in r0.stages and "aborted" in r0.detail
    assert kept and not np.allclose(kept[0], delta, atol=1e-6)
    held = DeviceStore(tmp_path / "v").load_residual(SECURE_SPEC.size, task_id)
    assert held is not None
    np.testing.assert_array_equal(held.residual, kept[0])
    assert DeviceStore(tmp_path / "v").load_accepted() is None
    for c in clients:
        c.close()


def test_a_secure_task_without_noise_is_not_marked(url: str, tmp_path: Path) -> None:
    # Prepare: the same task without distributed DP
    cfg = TaskConfig(
        name="h259-plain-secure", model_name="tiny",
        spec=[TensorShape(e.name, list(e.shape)) for e in SECURE_SPEC.entries],
        rounds=1, clients_per_round=3, over_selection=1.0, min_reports=3,
        selection_timeout_s=60.0, deadline_s=30.0, retry_after_s=0.2,
        secure={"coord_fraction": 0.5},
    )  # fmt: skip
    with httpx.Client(base_url=url, headers=AUTH) as http:
        task_id = int(http.post("/v1/admin/tasks", json=to_json(cfg)).json()["task_id"])
        http.put(
            f"/v1/admin/tasks/{task_id}/model",
            content=encode_snapshot(np.zeros(SECURE_SPEC.size, np.float32), SECURE_SPEC, "fp32"),
            headers={"content-type": "application/octet-stream"},
        ).raise_for_status()
    seen = Answers()
    clients = {f"d{i}": Client(url, str(tmp_path / f"d{i}"), mods=(seen,)) for i in range(3)}
    for c in clients.values():
        c.register()

    # Execute
    assigned = _assign_all(clients, task_id)

    # Assert
    assert all(a.secure and a.return_refused is None for a in assigned.values())
    assert all("return_refused" not in x["assignment"] for x in seen.answers if x["assignment"])
    for c in clients.values():
        c.close()


def test_a_callers_participant_in_a_dp_task_drops_an_input_not_taken(tmp_path: Path) -> None:
    # Prepare: a caller's own participant (as a simulator holds one) in a secure round of a
    # task with DP; the masked-input upload is answered with the 410 of an aborted round
    from dataclasses import replace

    from tests.sdk.test_h61_inflight import secure_task
    from tests.sdk.test_h81_caller_participant import ROUND, AtMaskedUpload, _participant

    closed = httpx.Response(410, json={"reason": "round_closed", "detail": "aborted"})
    coord, p = AtMaskedUpload(closed), _participant()
    before = p.residual.copy()
    delta = np.full(p.size, 0.05, np.float32)
    a = replace(secure_task(1, ROUND), return_refused=False)
    transport = httpx.MockTransport(coord)

    # Execute
    with Client("http://coord", str(tmp_path), transport=transport, retries=0, backoff_s=0) as c:
        report = c.secure_round(a, lambda params: (delta, 1, 0.0), participant=p)

    # Assert: nothing unsettled and the residual the input left (before: the one from before
    # the round, `before`): on the coordinate set the input covered, u minus what it stood for
    assert coord.posts == 1 and not report.completed and "aborted" in report.detail
    assert p.unsettled is None
    assert not np.array_equal(p.residual, before)
    off = np.isclose(p.residual, before + delta)  # coordinates the input did not cover
    assert 0 < int(off.sum()) < p.size
