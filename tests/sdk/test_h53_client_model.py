"""The client against a fake coordinator (idempotent replay by key, rounds that commit or are
abandoned, `round_outcome` answers), over random sequences of rounds in two tasks of one model
size, check-ins, re-sends, offline spells and crashes at any write of the app directory (the
app restarted after each): for each task, what the device trained is at every step either in
a committed round the coordinator holds, in an upload or record the device holds, or in the
task's residual, once."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import sdk.device_store as device_store
from compression import CodecConfig, UpdateCodec
from sdk import Client
from sdk import client as sdk_client
from sdk.client import ClientError
from sdk.device_store import DeviceStore

from .test_client import RECEIPT, SPEC
from .test_h51_task_residuals import _task
from .test_h53_ef_model import crashing
from .test_review_device_state import _Crash

TASKS = (1, 2)


def _dense(frame: bytes) -> np.ndarray:
    return UpdateCodec(SPEC, CodecConfig.dense()).decode(frame).to_dense()


class Coordinator:
    """Rounds (id -> task, state open/committed/abandoned) and this device's upload in each
    (key, frame), answering as the real one does: a known key replays its receipt first."""

    def __init__(self) -> None:
        self.rounds: dict[int, tuple[int, str]] = {}
        self.uploads: dict[int, tuple[str, bytes]] = {}
        self.offline = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.offline:
            raise httpx.ConnectError("offline", request=request)
        path = request.url.path
        if path.endswith("/checkin"):
            asked = json.loads(request.content).get("awaiting_round")
            body: dict[str, object] = {"action": "wait", "retry_after_s": 1.0, "assignment": None}
            if asked is not None:
                body["round_outcome"] = self.outcome(asked)
            return httpx.Response(200, json=body)
        round_id = int(path.split("/")[3])
        key = request.headers["idempotency-key"]
        held = self.uploads.get(round_id)
        if held is not None:
            if held[0] == key:
                return self.receipt(round_id)
            return httpx.Response(409, json={"reason": "duplicate_upload", "detail": "again"})
        if self.rounds[round_id][1] != "open":
            return httpx.Response(409, json={"reason": "round_closed", "detail": "late"})
        self.uploads[round_id] = (key, request.content)
        return self.receipt(round_id)

    def receipt(self, round_id: int) -> httpx.Response:
        return httpx.Response(200, json={**RECEIPT, "round_id": round_id})

    def outcome(self, round_id: int) -> str:
        if round_id not in self.rounds:
            return "unknown"
        state = self.rounds[round_id][1]
        if state == "open":
            return "pending"
        if state == "abandoned":
            return "abandoned"
        return "committed" if round_id in self.uploads else "excluded"


@settings(
    max_examples=int(os.environ.get("H53_EXAMPLES", "40")),
    stateful_step_count=14,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
class ClientEF(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        self.coord = Coordinator()
        self.client = self.open()
        self.trained = {t: np.zeros(SPEC.size, np.float64) for t in TASKS}
        self.next_round = 4
        # Records are never forgotten here (past the bound they count as delivered: that loss
        # is by design, and test_h53_ef_model checks it).
        self.saved_max = device_store.MAX_ACCEPTED
        device_store.MAX_ACCEPTED = 1000

    def open(self) -> Client:
        return Client(
            "http://coord", str(self.root), transport=httpx.MockTransport(self.coord), retries=0
        )

    def teardown(self) -> None:
        device_store.MAX_ACCEPTED = self.saved_max
        self.client.close()
        self.tmp.cleanup()

    def restart(self) -> None:
        self.client.close()
        self.client = self.open()

    def run(self, at: int | None, step: object) -> None:
        """Run `step` (a callable on the client), crashed at the store's write `at`: the app
        dies there and is started again."""
        try:
            with crashing(at, device_store):
                step()  # type: ignore[operator]
        except _Crash:
            self.restart()
        except httpx.TransportError:  # first: `CoordinatorUnreachable` is a ClientError too
            pass  # the network gone
        except ClientError as err:  # a refusal the fake coordinator gives: the app carries on
            assert err.reason in ("round_closed", "duplicate_upload"), err

    @rule(
        task=st.sampled_from(TASKS),
        at=st.none() | st.integers(0, 30),
        seed=st.integers(0, 3),
        offline=st.booleans(),
    )
    def train(self, task: int, at: int | None, seed: int, offline: bool) -> None:
        """A round of `task` opens; the device settles its earlier upload, encodes (top-k 0.5,
        8 bits: a residual remains) and uploads, maybe with the network gone."""
        self.next_round += 1
        round_id = self.next_round
        self.coord.rounds[round_id] = (task, "open")
        delta = np.random.default_rng([seed, round_id]).standard_normal(SPEC.size)
        delta = delta.astype(np.float32)
        params = np.zeros(SPEC.size, np.float32)
        encoded: list[bool] = []

        def step() -> None:
            self.client._run(sdk_client._settle_pending_flow(self.client._core))
            pending = self.client._core.encode(_task(task, round_id), SPEC, params, delta, 8)
            encoded.append(True)
            self.coord.offline = offline
            try:
                self.client.upload(pending, SPEC)
            finally:
                self.coord.offline = False

        self.run(at, step)
        meta = self.root / "pending.json"
        held = json.loads(meta.read_bytes())["round_id"] if meta.exists() else None
        if encoded or round_id in self.coord.uploads or held == round_id:
            self.trained[task] += delta  # the update exists (else: a dropout, never encoded)

    @precondition(lambda self: any(s == "open" for _, s in self.coord.rounds.values()))
    @rule(data=st.data(), committed=st.booleans())
    def close(self, data: st.DataObject, committed: bool) -> None:
        round_id = data.draw(
            st.sampled_from(sorted(r for r, (_, s) in self.coord.rounds.items() if s == "open"))
        )
        task = self.coord.rounds[round_id][0]
        self.coord.rounds[round_id] = (task, "committed" if committed else "abandoned")

    @rule(at=st.none() | st.integers(0, 8))
    def check_in(self, at: int | None) -> None:
        self.run(at, lambda: self.client.check_in(1))

    @rule(at=st.none() | st.integers(0, 8))
    def resume(self, at: int | None) -> None:
        self.run(at, self.client.resume_pending)

    @rule()
    def reopen(self) -> None:
        self.restart()

    @invariant()
    def each_content_once(self) -> None:
        # Read from a copy: opening the app directory finishes steps a crash cut, which would
        # hide from the client what a restart had left it.
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(self.root, Path(tmp) / "d")
            self.check(DeviceStore(Path(tmp) / "d"))

    def check(self, store: DeviceStore) -> None:
        pending = store.load_pending()
        where = {t: np.zeros(SPEC.size, np.float64) for t in TASKS}
        for round_id, (task, state) in self.coord.rounds.items():
            upload = self.coord.uploads.get(round_id)
            record = store.load_accepted(round_id)
            if state == "committed" and upload is not None:
                where[task] += _dense(upload[1])  # in the model
            elif record is not None:
                assert record.task_id == task
                where[task] += _dense(record.frame)
            elif pending is not None and pending.round_id == round_id:
                assert pending.task_id == task
                where[task] += _dense(pending.frame)
        for t in TASKS:
            ef = store.load_residual(SPEC.size, t)
            if ef is not None:
                where[t] += ef.residual
            np.testing.assert_allclose(where[t], self.trained[t], atol=1e-4, err_msg=f"task {t}")


TestClientEF = ClientEF.TestCase


@pytest.mark.parametrize("committed", [False, True])
@pytest.mark.parametrize("check_in_first", [True, False])
def test_a_round_crashed_at_every_write_then_settled_keeps_each_content_once(
    committed: bool, check_in_first: bool
) -> None:
    # A sweep rather than a draw: a round of task 1 crashed at each write of its settle,
    # encode and upload in turn (then at none), its round closed, and the restarted app checks
    # in and re-sends in either order, twice; the content is where it should be after each.
    for at in [*range(40), None]:
        machine = ClientEF()
        try:
            machine.train(1, at, 0, False)  # round 5
            machine.coord.rounds[5] = (1, "committed" if committed else "abandoned")
            machine.restart()
            for _ in range(2):
                for step in (machine.check_in, machine.resume)[:: 1 if check_in_first else -1]:
                    step(None)
                    machine.each_content_once()
        finally:
            machine.teardown()
