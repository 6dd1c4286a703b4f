"""A SecAgg+ round in flight on an `AsyncClient` while the app's other rounds and check-ins run.

The round takes its task's secure participant at setup and computes the masked input from it
stages later. Meanwhile, the client's other secure rounds can push that participant out of the
in-memory cache (at most MAX_RESIDUALS (task, size) participants), and a check-in can settle a
record of the same task: its content then reaches the app directory (and no participant in
memory). Before the fix, the round in flight computed its input from the participant it took at
setup, which missed that content, and saved the residual it left over the app directory's: the
returned content was lost. Against `SecureFake`, a scripted in-process coordinator (also used by
the other h61 tests): a real SecAgg+ server and two simulated peers, one round per round id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from compression import CodecConfig, ErrorFeedback, ModelSpec, UpdateCodec, encode_snapshot
from coordinator.secure import SecureConfig
from coordinator.secure._coordinator import make_plan
from protocol.messages import Assignment, TensorShape
from protocol.names import Header, ModelEncoding
from protocol.secagg import (
    AdvertiseKeys,
    MaskedInput,
    SecAggHeader,
    SecAggServer,
    SecurePlan,
    ShareKeys,
    Stage,
    UnmaskResponse,
    model_digest,
    round_digest,
)
from sdk import AsyncClient
from sdk.client import SecureRoundReport
from sdk.device_store import MAX_RESIDUALS, AcceptedUpload, DeviceStore
from sdk.secure import SecureParticipant, SecureSession

from .test_client import SPEC, _assignment

PEERS = 2  # simulated devices beside the one under test (node 0): a cohort of 3
LEDGER = "x-plume-ledger-round"


def secure_task(task_id: int, round_id: int, spec: ModelSpec = SPEC) -> Assignment:
    return replace(
        _assignment(),
        task_id=task_id,
        round_id=round_id,
        spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
        model_path=f"/v1/tasks/{task_id}/model",
        upload_path=f"/v1/rounds/{round_id}/updates",
        deadline_unix=4e9,
        secure=True,
    )


@dataclass
class _Round:
    """One secure round of the fake: the server's half, the peers' sessions, what is closed."""

    plan: SecurePlan
    params: npt.NDArray[np.float32]
    server: SecAggServer
    peers: list[SecureSession]
    downloads: dict[str, bytes] = field(default_factory=dict)


class SecureFake:
    """A scripted coordinator (an `httpx.MockTransport` handler, sync and async): model
    downloads (fp32 snapshots), secure rounds (a stage closes at the device's first download
    of it, the peers answering at once) and check-ins (`wait`, with `outcomes[awaiting_round]`
    as `round_outcome` when one is named). Every round-bound answer names its round in the
    ledger header, as the coordinator does. `seen` lists (method, path) of every request."""

    def __init__(self, spec: ModelSpec = SPEC, outcomes: dict[int, str] | None = None) -> None:
        self.spec = spec
        self.outcomes = dict(outcomes or {})
        self.rounds: dict[int, _Round] = {}
        self.seen: list[tuple[str, str]] = []

    def params(self, task_id: int) -> npt.NDArray[np.float32]:
        return np.random.default_rng([task_id, 7]).normal(0, 0.1, self.spec.size).astype(np.float32)

    def _round(self, round_id: int, task_id: int) -> _Round:
        if round_id not in self.rounds:
            size = self.spec.size
            plan = make_plan(
                SecureConfig(coord_fraction=0.5, sketch=False, clip_norm=10.0),
                round_id, PEERS + 1, size, np.arange(0, size, 2, dtype=np.int64),
            )  # fmt: skip
            params = self.params(task_id)
            digest = round_digest(model_digest(params), plan)
            peers = [
                SecureParticipant(size).join(plan.to_bytes(), digest, params, node)
                for node in range(1, PEERS + 1)
            ]
            server = SecAggServer(plan.protocol_params(model_digest(params)))
            for peer in peers:
                server.receive_advertise(AdvertiseKeys.from_bytes(peer.advertise()))
            self.rounds[round_id] = _Round(plan, params, server, peers)
        return self.rounds[round_id]

    def _close(self, r: _Round, stage: str) -> bytes:
        n = r.plan.num_nodes
        if stage not in r.downloads:
            if stage == Stage.ADVERTISE_KEYS:
                dirs = r.server.close_advertise()
                for node, peer in enumerate(r.peers, 1):
                    msg = ShareKeys.from_bytes(peer.share_keys(dirs[node].to_bytes()), n)
                    r.server.receive_share_keys(msg)
                r.downloads[stage] = dirs[0].to_bytes()
            elif stage == Stage.SHARE_KEYS:
                deliveries = r.server.close_share_keys()
                for node, peer in enumerate(r.peers, 1):
                    delta = np.full(r.plan.model_size, 0.01 * node, np.float32)
                    body = peer.masked_input(
                        deliveries[node].to_bytes(), delta, 1, np.random.default_rng(node)
                    )
                    msg = MaskedInput.from_bytes(body, r.plan.vector_len, r.plan.ring_bits)
                    r.server.receive_masked_input(msg)
                r.downloads[stage] = deliveries[0].to_bytes()
            else:
                request = r.server.close_masked_input()
                for peer in r.peers:
                    answer = UnmaskResponse.from_bytes(peer.unmask(request.to_bytes()), n)
                    r.server.receive_unmask(answer)
                r.downloads[stage] = request.to_bytes()
        return r.downloads[stage]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.seen.append((request.method, path))
        parts = path.strip("/").split("/")
        if path == "/v1/checkin":
            asked = json.loads(request.content).get("awaiting_round")
            answer: dict[str, Any] = {"action": "wait", "retry_after_s": 1.0}
            if asked is not None:
                answer["round_outcome"] = self.outcomes.get(asked, "pending")
            return httpx.Response(200, json=answer)
        if parts[:2] == ["v1", "tasks"] and parts[3] == "model":
            params = self.params(int(parts[2]))
            return httpx.Response(
                200,
                content=encode_snapshot(params, self.spec, dtype="fp32"),
                headers={
                    Header.MODEL_ENCODING: ModelEncoding.SNAPSHOT,
                    Header.MODEL_DIGEST: model_digest(params).hex(),
                    Header.MODEL_VERSION: "3",
                },
            )
        assert parts[:3] == ["v1", "secure", "rounds"], path
        round_id = int(parts[3])
        ledger = {LEDGER: str(round_id)}
        if parts[4] == "setup":
            # The task is not on the wire here: the fake's rounds are numbered task * 100 + k.
            r = self._round(round_id, round_id // 100)
            headers = {
                SecAggHeader.DIGEST: round_digest(model_digest(r.params), r.plan).hex(),
                SecAggHeader.NODE: "0",
                **ledger,
            }
            return httpx.Response(200, content=r.plan.to_bytes(), headers=headers)
        r, stage = self.rounds[round_id], parts[5]
        if request.method == "GET":
            return httpx.Response(200, content=self._close(r, stage), headers=ledger)
        n = r.plan.num_nodes
        if stage == Stage.ADVERTISE_KEYS:
            r.server.receive_advertise(AdvertiseKeys.from_bytes(request.content))
        elif stage == Stage.SHARE_KEYS:
            r.server.receive_share_keys(ShareKeys.from_bytes(request.content, n))
        elif stage == Stage.MASKED_INPUT:
            msg = MaskedInput.from_bytes(request.content, r.plan.vector_len, r.plan.ring_bits)
            r.server.receive_masked_input(msg)
        else:
            r.server.receive_unmask(UnmaskResponse.from_bytes(request.content, n))
            r.server.finish()
        receipt = {
            "round_id": round_id, "device_id": "0" * 32, "accepted": True,
            "duplicate": False, "payload_bytes": len(request.content), "reports": 1,
        }  # fmt: skip
        return httpx.Response(200, json=receipt, headers=ledger)


def held_residual(root: Path, task_id: int) -> npt.NDArray[np.float32]:
    ef = DeviceStore(root).load_residual(SPEC.size, task_id)
    assert ef is not None
    return ef.residual.copy()


def record_content(root: Path, round_id: int) -> npt.NDArray[np.float32]:
    record = DeviceStore(root).load_accepted(round_id)
    assert record is not None, f"no record of round {round_id}"
    return UpdateCodec(record.spec, CodecConfig.dense()).decode(record.frame).to_dense()


def _paused_at(
    stage: str, paused: asyncio.Event, resume: asyncio.Event
) -> Callable[[httpx.Request, Callable[[httpx.Request], Awaitable[httpx.Response]]], Any]:
    """An async client mod that holds the first download of `stage` until `resume` is set (the
    round waits there, as for a stage still open), setting `paused` when it starts to wait."""

    async def mod(
        request: httpx.Request, nxt: Callable[[httpx.Request], Awaitable[httpx.Response]]
    ) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith(f"/stages/{stage}"):
            if not paused.is_set():
                paused.set()
                await resume.wait()
        return await nxt(request)

    return mod


async def until(event: asyncio.Event, task: asyncio.Task[Any]) -> None:
    """Wait for `event`; the error of `task` if it ends first (a round that failed early)."""
    waiter = asyncio.ensure_future(event.wait())
    done, _ = await asyncio.wait({waiter, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        raise AssertionError(f"never paused: {task.result() if task.done() else 'timeout'}")


def test_a_record_settled_while_a_secure_round_waits_is_not_lost_when_its_participant_left_memory(
    tmp_path: Path,
) -> None:
    # Prepare: task 1 holds residual OLD and a record of its round 3 (content BACK) whose round
    # the coordinator will answer `abandoned`
    old = np.linspace(-0.5, 0.5, SPEC.size).astype(np.float32)
    back = np.where(np.arange(SPEC.size) % 3 == 0, 0.25, 0.0).astype(np.float32)
    ef = ErrorFeedback(SPEC.size)
    ef.residual = old
    store = DeviceStore(tmp_path)
    store.save_residual(ef, 1)
    frame, _ = UpdateCodec(SPEC, CodecConfig.dense()).encode(
        back, np.random.default_rng(0), weight=0.0
    )
    store.save_accepted(AcceptedUpload(3, frame, SPEC, 1))
    fake = SecureFake(outcomes={3: "abandoned"})
    delta = np.full(SPEC.size, 0.05, np.float32)

    async def scenario() -> SecureRoundReport:
        paused, resume = asyncio.Event(), asyncio.Event()
        async with AsyncClient(
            "http://coord", str(tmp_path), transport=httpx.MockTransport(fake), retries=0,
            mods=(_paused_at(Stage.SHARE_KEYS, paused, resume),),
        ) as client:  # fmt: skip
            # Execute: task 1's secure round 101 waits for its share-keys stage to close;
            # meanwhile the app runs secure rounds of MAX_RESIDUALS other tasks (their devices
            # drop before advertising: no record) and checks in, which settles round 3
            main = asyncio.create_task(client.secure_round(secure_task(1, 101), lambda p: (delta, 8, 0.0)))  # fmt: skip
            await until(paused, main)
            for t in range(2, MAX_RESIDUALS + 2):
                other = await client.secure_round(
                    secure_task(t, t * 100 + 1), lambda p: (delta, 8, 0.0),
                    drop_at=Stage.ADVERTISE_KEYS,
                )  # fmt: skip
                assert not other.completed
            answer = await client.check_in(1)
            assert answer.round_outcome == "abandoned"
            resume.set()
            return await main

    report = asyncio.run(scenario())

    # Assert: the round completed; its masked input stood for part of OLD + BACK + DELTA and the
    # residual holds the rest: BACK is there once. Before, the round's input was computed from
    # the participant taken at setup (OLD), and its saved residual overwrote OLD + BACK: BACK lost
    assert report.completed, report.detail
    assert DeviceStore(tmp_path).load_accepted(3) is None
    left, sent = held_residual(tmp_path, 1), record_content(tmp_path, 101)
    np.testing.assert_allclose(left + sent, old + back + delta, atol=1e-5)
