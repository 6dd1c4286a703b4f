"""A model-based (stateful) test of the plain coordinator service.

Hypothesis drives a real coordinator on loopback (`ServerThread`, its SQLite store in a tmp dir,
a stepped coordinator clock) through what devices and the operator do: register, check in
(asking what became of the last upload), download the model (snapshot, delta chain, fp16),
upload a compressed update made by the SDK's encoder, retry it with the same Idempotency-Key,
replay a signed request, send refused uploads (garbage, truncated, oversized, signed for
another round, for no round, without a key), let time pass so rounds open and close, pause and
resume the task, and restart the coordinator on the same database: cleanly, or as a crash that
never ran the round closes it had due.

Round closes are deferred (the app's `schedule_close` records them) and run when the machine
settles, restarts cleanly, or lets time pass: requests can arrive between a round filling up
and its close, as they do on a busy event loop, and a crash leaves a full round unclosed.

After every step the machine checks:
- every upload that got a receipt is stored once and counted once in its round: the round's
  report count is its receipts, a committed round's total weight is theirs, and
  `round_outcome` says `committed`, `abandoned` or `pending` as the round's state does;
- the bandwidth ledger holds, per round, device and direction, exactly the payload, HTTP/1.1
  wire and dense bytes of the exchanges the service said it counted (`x-plume-ledger-round`),
  computed on this side of the wire as the SDK does;
- the model version only grows, each version keeps one digest (in memory and in the store),
  and the published model hashes to it; every download decodes to it bit for bit;
- a refused request gets a 4xx with a known `reason` and a detail, and changes nothing
  (tasks, rounds, stored updates, the round in memory, the selection pool); no 5xx at all
  (the documented 503s need a failing store, which this machine does not simulate).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from compression import UpdateCodec, decode_snapshot, model_digest
from coordinator.service import ServerThread, ServiceConfig, create_app
from coordinator.service.rounds import LEDGER_GRACE_S, Coordinator
from coordinator.service.store import Store
from protocol import auth
from protocol.messages import (
    apply_delta,
    request_wire_bytes,
    response_wire_bytes,
    to_json,
    unpack_chain,
)
from protocol.names import Path as P
from protocol.names import Reason
from sdk.device import UpdateEncoder
from tests import _clock

from .test_service_support import ADMIN, SPEC, initial_params, task_config

N_DEVICES = 4
KEYS = [hashlib.sha256(f"plume-h75-device-{i}".encode()).digest() for i in range(N_DEVICES)]
DEVICE_IDS = [auth.device_id_for(auth.public_key_bytes(k)) for k in KEYS]
# 3 selected (over-selection 1.5), 2 reports close a round early, fewer than 2 at the deadline
# abandon it: both ends of a round are reachable within a few steps.
TASK = task_config(
    rounds=6,
    clients_per_round=2,
    over_selection=1.5,
    min_reports=2,
    deadline_s=30.0,
    selection_timeout_s=5.0,
)
WEIGHT = 10.0  # every update's weight (examples trained on)
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}
LEDGER_HEADER = "x-plume-ledger-round"
UNKNOWN_ROUND = 10**6
REASONS = {str(r) for r in Reason}
# Seconds the machine waits for an answer (and then for the app to finish the request). Not
# httpx's default 5 s: the coordinator runs in this test process, whose full garbage
# collections (hypothesis's data, and the stores and coordinators of dozens of past apps, which
# FastAPI's lru_caches of route callables keep alive: 0.5 to 0.8 M objects) stop its thread
# too. In the slow runs (s54, helper E) 15 of the 16 requests over 0.3 s overlapped one (the
# other: the first model upload's thread-pool start): 0.4 to 1.1 s at load 6,
# up to 2.6 s at load 8 (a 3.1 s model download); the ReadTimeouts of stops 53 and 54 came at
# load 6 to 14, and hypothesis, unable to replay them, reported a flaky test. No wait of the
# coordinator comes near this limit: its store waits at most its busy timeout (5 s) per
# statement for another connection's write lock, and only test_h83's `database_locked` holds
# one, with that timeout cut to 20 ms. A request unanswered this long is a hang, and fails as
# one (`Service.exchange`).
ANSWER_TIMEOUT_S = 60.0
# Rules that fired over every run in this process (reported by the slow exploration test).
FIRED: collections.Counter[str] = collections.Counter()


class _Errors(logging.Handler):
    """Error records the coordinator and uvicorn log (a failure a response may not show)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


class Clock(_clock.Clock):
    """The coordinator's clock (seconds); request signatures keep the real one."""

    start = 1_800_000_000.0


@dataclass
class Receipt:
    key: str
    frame: bytes


@dataclass
class Sent:
    """A signed request as sent, to send again byte for byte (a replay)."""

    method: str
    path: str
    params: dict[str, str] | None
    body: bytes
    headers: dict[str, str]


def encode_update(seed: int) -> bytes:
    """A valid upload frame: a small delta through the SDK's encoder with the task's codec."""
    rng = np.random.default_rng(seed)
    delta = rng.normal(0, 0.01, SPEC.size).astype(np.float32)
    frame, _ = UpdateEncoder(SPEC, TASK.codec.to_config()).encode(delta, rng, WEIGHT)
    return frame


class Finished:
    """The app, counting requests it has finished: the ledger is written after the response
    went out, so a test reads it once the count says the last request is done."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state
        self.done = 0
        self.cond = threading.Condition()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                with self.cond:
                    self.done += 1
                    self.cond.notify_all()

    def wait(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.done >= n, timeout=ANSWER_TIMEOUT_S), (
                f"request {n} answered but not finished by the app after {ANSWER_TIMEOUT_S:g} s"
            )


class Service:
    """One coordinator process on a database: start, settle due closes, stop or crash."""

    def __init__(self, db: Path, clock: Clock, keep_frames: int | None) -> None:
        self.db = db
        self.clock = clock
        self.config = ServiceConfig(
            db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=3600.0,  # no own ticks
            keep_frames_rounds=keep_frames,
        )  # fmt: skip
        self.deferred: list[Any] = []
        self.start()

    def start(self) -> None:
        self.app = create_app(self.config)
        self.coord: Coordinator = self.app.state.coordinator
        self.store: Store = self.app.state.store
        self.coord.clock = self.clock
        self.deferred = []
        # The app schedules a close on its event loop; here it waits for `settle` instead.
        self.coord.schedule_close = self.deferred.append  # type: ignore[method-assign]
        self.finished = Finished(self.app)
        self.sent = 0
        self.server = ServerThread(self.config, app=self.finished)
        # No TLS on loopback: verify=False spares the 20 ms of loading CA certificates.
        self.http = httpx.Client(
            base_url=self.server.start(), verify=False, timeout=self.answer_timeout_s
        )

    answer_timeout_s = ANSWER_TIMEOUT_S

    def exchange(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; return its response once the app has finished with it (every
        request of this process goes through here, so the counts match). A request left
        unanswered for `answer_timeout_s` fails the step, naming itself and the wait."""
        start = time.monotonic()
        try:
            response = self.http.send(request)
        except httpx.TimeoutException as exc:
            raise AssertionError(
                f"{request.method} {request.url.raw_path.decode('ascii')}: no answer after "
                f"{time.monotonic() - start:.1f} s ({type(exc).__name__}; the limit is "
                f"{self.answer_timeout_s:g} s): the coordinator hung"
            ) from exc
        self.sent += 1
        self.finished.wait(self.sent)
        return response

    def settle(self, tick: bool = True) -> None:
        """What the event loop does while no request arrives: a tick, then every due close."""
        if tick:
            self.deferred.extend(self.coord.tick())

        async def closes() -> None:
            while self.deferred:
                await self.coord.close_round(self.deferred.pop(0))

        asyncio.run(closes())

    def stop(self, crash: bool) -> None:
        if not crash:
            self.settle(tick=False)  # the lifespan's drain: closes in flight finish
        self.http.close()
        self.server.stop()
        self.store.close()


class PlainServiceMachine(RuleBasedStateMachine):
    devices = st.integers(0, N_DEVICES - 1)
    keep_frames: int | None = None  # ServiceConfig.keep_frames_rounds

    def __init__(self) -> None:
        super().__init__()
        self._tmp = TemporaryDirectory(prefix="h75-")
        self.clock = Clock()
        self.svc = Service(Path(self._tmp.name) / "plume.db", self.clock, self.keep_frames)
        self.registered: set[int] = set()
        self.receipts: dict[tuple[int, int], Receipt] = {}  # (round, device) -> upload
        self.assigned: dict[int, int] = {}  # device -> round of its last assignment
        self.held: dict[int, tuple[int, npt.NDArray[np.float32]]] = {}  # device -> model
        self.last_sent: dict[int, Sent] = {}
        # (round, device id, direction) -> [payload, wire, dense, requests]
        self.ledger: dict[tuple[int, str, str], list[int]] = {}
        self.digests: dict[int, str] = {}  # version -> digest
        self.max_version = 0
        self.keys = 0
        self.errors = _Errors()
        self.trace: list[str] = []
        for name in ("plume.coordinator", "uvicorn.error"):
            logging.getLogger(name).addHandler(self.errors)

    def teardown(self) -> None:
        for name in ("plume.coordinator", "uvicorn.error"):
            logging.getLogger(name).removeHandler(self.errors)
        self.svc.stop(crash=False)
        self._tmp.cleanup()

    # -- plumbing ------------------------------------------------------------------------

    @property
    def coord(self) -> Coordinator:
        return self.svc.coord

    def fingerprint(self) -> Any:
        """What a refused request must not change: stored tasks, rounds, updates and devices,
        the round in memory and the selection pool."""
        store = self.svc.store
        rt = self.coord.runtimes.get(self.task_id)
        cur = rt.current if rt else None
        return (
            [(t.task_id, t.state, t.version, t.digest) for t in store.tasks()],
            [
                (
                    r.round_id,
                    r.state,
                    r.version_after,
                    [(u.device_id, u.idempotency_key, u.frame) for u in store.updates(r.round_id)],
                )
                for r in store.rounds(self.task_id)
            ],  # fmt: skip
            store.count_devices(),
            None if rt is None else (rt.state, rt.version, rt.digest, list(rt.pool)),
            None if cur is None else (cur.round_id, cur.reports, sorted(cur.uploaded)),
        )

    def send(
        self, request: httpx.Request, *, dense_up: int = 0, payload_up: int = 0
    ) -> httpx.Response:
        before = self.fingerprint()
        response = self.svc.exchange(request)
        status = response.status_code
        assert status < 500 or (
            status == 503 and response.json()["reason"] == Reason.STORE_UNAVAILABLE
        ), (status, response.text)
        if status >= 400:
            body = response.json()
            assert body["reason"] in REASONS and body["detail"], body
            assert self.fingerprint() == before, f"refused {status} {body} changed state"
        counted = response.headers.get(LEDGER_HEADER)
        self.trace.append(
            f"{request.method} {request.url.raw_path.decode()} "
            f"{request.headers.get('x-plume-device', 'admin')[:6]} -> {status} {counted}"
        )
        if counted is not None:
            up = request_wire_bytes(
                request.method, request.url.raw_path.decode("ascii"), request.headers.raw,
                len(request.content),
            )  # fmt: skip
            down = response_wire_bytes(status, response.headers.raw, len(response.content))
            model = status == 200 and request.method == "GET" and "/model" in request.url.path
            # The empty chain (have= the current version) sends no model: no dense bytes, as
            # the ledger counts it since 1e252e0.
            empty_chain = response.headers.get(
                "x-plume-model-encoding"
            ) == "delta-chain" and response.headers.get(
                "x-plume-model-version"
            ) == request.url.params.get("have")
            device = request.headers["x-plume-device"]
            for direction, payload, wire, dense in (
                ("up", payload_up, up, dense_up),
                (
                    "down",
                    len(response.content) if model else 0,
                    down,
                    SPEC.dense_bytes * (model and not empty_chain),
                ),
            ):
                cell = self.ledger.setdefault((int(counted), device, direction), [0, 0, 0, 0])
                for i, v in enumerate((payload, wire, dense, 1)):
                    cell[i] += v
        return response

    def signed(
        self,
        d: int,
        method: str,
        path: str,
        *,
        round_id: int = 0,
        body: bytes = b"",
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        dense_up: int = 0,
        payload_up: int = 0,
    ) -> httpx.Response:
        request = self.svc.http.build_request(
            method, path, params=params, content=body or None, headers=headers
        )
        sig = auth.sign_request(
            KEYS[d], method=method, target=request.url.raw_path.decode("ascii"),
            round_id=round_id, body=body, timestamp_ms=int(time.time() * 1000),
        )  # fmt: skip
        for k, v in sig.items():
            request.headers[str(k)] = v
        member = False
        if round_id > 0:
            # Counted in the signed round only while it is open or closed at most
            # LEDGER_GRACE_S ago, and only for the round or task the URL names (324831c).
            row = self.svc.store.round(round_id)
            url_round = re.match(r"/v1/rounds/(\d+)", path)
            url_task = re.match(r"/v1/tasks/(\d+)", path)
            member = (
                row is not None
                and DEVICE_IDS[d] in row.selected
                and (row.closed_unix is None or self.clock.now - row.closed_unix <= LEDGER_GRACE_S)
                and (url_round is None or int(url_round.group(1)) == round_id)
                and (url_task is None or int(url_task.group(1)) == row.task_id)
            )
        response = self.send(request, dense_up=dense_up, payload_up=payload_up)
        verified = response.status_code not in (401, 413, 415)
        if method == "POST" and re.fullmatch(r"/v1/rounds/\d+/updates", path):
            # An upload without an Idempotency-Key is refused before its signature is
            # verified (dcb8c9b): 400, its nonce not spent, control traffic.
            verified = verified and "idempotency-key" in (headers or {})
        if verified:  # its nonce was spent
            self.last_sent[d] = Sent(method, path, params, body, dict(request.headers))
        # Counted in the signed round iff the signature verified and the device is the round's
        # (anyone can sign any round id); else control traffic, in no round's ledger.
        owed = str(round_id) if verified and member else None
        if path == P.CHECK_IN and response.status_code == 200:
            assignment = response.json()["assignment"]
            if assignment is not None:  # the check-in that assigns counts in that round
                owed = str(assignment["round_id"])
        counted = response.headers.get(LEDGER_HEADER)
        assert counted == owed, (
            round_id, member, response.status_code, counted,
        )  # fmt: skip
        return response

    def admin(self, method: str, path: str) -> httpx.Response:
        return self.send(self.svc.http.build_request(method, path, headers=ADMIN_AUTH))

    def upload(
        self, d: int, url_round: int, frame: bytes, key: str | None, signed_round: int | None = None
    ) -> httpx.Response:
        headers = {"content-type": "application/octet-stream"}
        if key is not None:
            headers["idempotency-key"] = key
        known = self.svc.store.round_task(url_round) is not None
        return self.signed(
            d, "POST", P.UPLOAD.format(round_id=url_round),
            round_id=url_round if signed_round is None else signed_round, body=frame,
            headers=headers, dense_up=SPEC.dense_bytes if known else 0, payload_up=len(frame),
        )  # fmt: skip

    def new_key(self) -> str:
        self.keys += 1
        return f"h75-{self.keys}"

    def expected_upload(self, r: int, d: int) -> tuple[int, str | None]:
        """(status, reason) the service owes a first upload by `d` to round `r`."""
        if d not in self.registered:
            return 401, Reason.UNREGISTERED
        if (r, d) in self.receipts:
            return 409, Reason.DUPLICATE_UPLOAD
        found = self.coord._runtime_for_round(r)
        if found is None:
            if self.svc.store.round_task(r) is None:
                return 404, Reason.UNKNOWN_ROUND
            return 409, Reason.ROUND_CLOSED
        cur = found[1]
        if DEVICE_IDS[d] not in cur.selected:
            return 403, Reason.NOT_SELECTED
        if cur.closing or self.clock.now >= cur.deadline or cur.reports >= cur.target:
            return 409, Reason.ROUND_CLOSED
        return 200, None

    def outcome_owed(self, r: int) -> str:
        state = self.svc.store.round_state(r)
        assert state is not None
        if self.coord._runtime_for_round(r) is not None:
            return "pending"
        return {"committed": "committed", "abandoned": "abandoned"}.get(state[1], "pending")

    # -- rules ---------------------------------------------------------------------------

    @initialize()
    def create_task(self) -> None:
        from compression import encode_snapshot

        http = self.svc.http
        r = self.svc.exchange(
            http.build_request("POST", P.ADMIN_TASKS, json=to_json(TASK), headers=ADMIN_AUTH)
        )
        assert r.status_code == 201, r.text
        self.task_id = int(r.json()["task_id"])
        r = self.svc.exchange(
            http.build_request(
                "PUT", P.ADMIN_TASK_MODEL.format(task_id=self.task_id),
                content=encode_snapshot(initial_params(), SPEC, "fp32"),
                headers={**ADMIN_AUTH, "content-type": "application/octet-stream"},
            )
        )  # fmt: skip
        assert r.status_code == 200, r.text
        for d in range(N_DEVICES - 1):  # the last device registers later, if ever
            self.register(d)

    @rule(train=st.sets(devices), seed=st.integers(0, 2**16))
    def fleet_checks_in(self, train: set[int], seed: int) -> None:
        """Every registered device checks in, asking what became of its last upload; those in
        `train` then download and upload if they hold an assignment they have not used."""
        FIRED["fleet_checks_in"] += 1
        for d in sorted(self.registered):
            self.check_in(d, True)
        for d in sorted(train & self.registered):
            if d in self.assigned and (self.assigned[d], d) not in self.receipts:
                self.download(d, "auto")
                self.send_update(d, seed + d)

    @rule(d=devices)
    def register(self, d: int) -> None:
        FIRED["register"] += 1
        public = auth.public_key_bytes(KEYS[d])
        body = json.dumps(
            {"public_key": base64.urlsafe_b64encode(public).rstrip(b"=").decode()}
        ).encode()
        r = self.signed(
            d, "POST", P.REGISTER, body=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        assert len(answer.pop("incarnation")) == 32  # the database's (test_s54a_incarnation)
        assert answer == {"device_id": DEVICE_IDS[d], "created": d not in self.registered}
        self.registered.add(d)

    @rule(d=devices, ask=st.booleans())
    def check_in(self, d: int, ask: bool) -> None:
        FIRED["check_in"] += 1
        mine = [r for (r, dev) in self.receipts if dev == d]
        awaiting = max(mine) if ask and mine else None
        body: dict[str, int] = {"task_id": self.task_id}
        if awaiting is not None:
            body["awaiting_round"] = awaiting
        r = self.signed(
            d, "POST", P.CHECK_IN, body=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )  # fmt: skip
        if d not in self.registered:
            assert r.status_code == 401 and r.json()["reason"] == Reason.UNREGISTERED, r.text
            return
        assert r.status_code == 200, r.text
        answer = r.json()
        if awaiting is not None:
            FIRED["check_in/round_outcome"] += 1
            assert answer["round_outcome"] == self.outcome_owed(awaiting), (awaiting, answer)
        if answer["assignment"] is not None:
            FIRED["check_in/assigned"] += 1
            a = answer["assignment"]
            found = self.coord._runtime_for_round(a["round_id"])
            assert found is not None and DEVICE_IDS[d] in found[1].selected
            assert (a["round_id"], d) not in self.receipts  # not assigned again once uploaded
            self.assigned[d] = a["round_id"]

    @rule(d=devices, how=st.sampled_from(["snapshot", "auto", "delta", "fp16"]))
    def download(self, d: int, how: str) -> None:
        FIRED[f"download/{how}"] += 1
        held = self.held.get(d)
        params: dict[str, str] = {"format": "snapshot" if how == "fp16" else how}
        params["dtype"] = "fp16" if how == "fp16" else "fp32"
        if how in ("auto", "delta") and held is not None:
            params["have"] = str(held[0])
        elif how == "delta":
            params["format"] = "auto"
        r = self.signed(
            d, "GET", P.MODEL.format(task_id=self.task_id), params=params,
            round_id=self.assigned.get(d, 0),
        )  # fmt: skip
        if d not in self.registered:
            assert r.status_code == 401, r.text
            return
        rt = self.coord.runtimes[self.task_id]
        if r.status_code == 409:  # a delta chain longer than max_chain
            assert how == "delta" and r.json()["reason"] == Reason.UNKNOWN_VERSION, r.text
            assert held is not None and rt.version - held[0] > TASK.max_chain
            return
        assert r.status_code == 200, r.text
        version = int(r.headers["x-plume-model-version"])
        assert version == rt.version and r.headers["x-plume-model-digest"] == rt.digest
        if how == "fp16":
            assert r.headers["x-plume-model-exact"] == "0"
            return
        if r.headers["x-plume-model-encoding"] == "delta-chain":
            FIRED["download/delta-chain"] += 1
            assert held is not None
            model = held[1]
            codec = UpdateCodec(SPEC, TASK.downlink.to_config())
            for frame in unpack_chain(r.content, max_frames=100, max_frame_bytes=1 << 20):
                model = apply_delta(model, codec.decode(frame))
        else:
            model = decode_snapshot(r.content, SPEC)
        assert model_digest(model).hex() == rt.digest  # bit for bit the published model
        self.held[d] = (version, model)

    @rule(d=devices, seed=st.integers(0, 2**16))
    def participate(self, d: int, seed: int) -> None:
        """What the SDK's participate loop does: check in; once assigned, download and upload."""
        FIRED["participate"] += 1
        self.check_in(d, True)
        if d in self.assigned and (self.assigned[d], d) not in self.receipts:
            self.download(d, "auto")
            self.send_update(d, seed)

    @precondition(lambda self: bool(self.assigned))
    @rule(data=st.data(), seed=st.integers(0, 2**16))
    def upload_update(self, data: st.DataObject, seed: int) -> None:
        self.send_update(data.draw(st.sampled_from(sorted(self.assigned))), seed)

    def send_update(self, d: int, seed: int) -> None:
        r = self.assigned[d]
        frame, key = encode_update(seed), self.new_key()
        status, reason = self.expected_upload(r, d)
        FIRED[f"upload/{status}"] += 1
        response = self.upload(d, r, frame, key)
        assert response.status_code == status, (status, reason, response.text)
        if status != 200:
            assert response.json()["reason"] == reason
            return
        receipt = response.json()
        n = sum(1 for (rr, _) in self.receipts if rr == r) + 1
        assert receipt == {
            "round_id": r, "device_id": DEVICE_IDS[d], "accepted": True, "duplicate": False,
            "payload_bytes": len(frame), "reports": n,
        }  # fmt: skip
        self.receipts[(r, d)] = Receipt(key, frame)

    @precondition(lambda self: bool(self.receipts))
    @rule(data=st.data(), how=st.sampled_from(["same", "other_frame", "other_key"]))
    def retry_upload(self, data: st.DataObject, how: str) -> None:
        r, d = data.draw(st.sampled_from(sorted(self.receipts)))
        self.retry(r, d, how)

    def retry(self, r: int, d: int, how: str) -> None:
        """`d`'s upload to round `r` again: the same (an idempotent retry), the same bytes
        under another key (the stored upload too: its receipt again), or another frame (a
        duplicate)."""
        FIRED[f"retry/{how}"] += 1
        sent = self.receipts[(r, d)]
        frame = sent.frame if how != "other_frame" else encode_update(99_999)
        key = sent.key if how != "other_key" else self.new_key()
        response = self.upload(d, r, frame, key)
        if how == "other_frame":
            assert response.status_code == 409, response.text
            assert response.json()["reason"] == Reason.DUPLICATE_UPLOAD
            return
        assert response.status_code == 200, response.text
        n = sum(1 for (rr, _) in self.receipts if rr == r)
        assert response.json() == {
            "round_id": r, "device_id": DEVICE_IDS[d], "accepted": True, "duplicate": True,
            "payload_bytes": len(frame), "reports": n,
        }  # fmt: skip

    @precondition(lambda self: bool(self.last_sent))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        self.replay_of(data.draw(st.sampled_from(sorted(self.last_sent))))

    def replay_of(self, d: int) -> None:
        """`d`'s last signed request, sent again byte for byte."""
        FIRED["replay"] += 1
        s = self.last_sent[d]
        request = self.svc.http.build_request(
            s.method, s.path, params=s.params, content=s.body or None, headers=s.headers
        )
        response = self.send(request)
        assert response.status_code == 401, response.text
        assert response.json()["reason"] == Reason.REPLAYED_NONCE

    @rule(
        d=devices,
        how=st.sampled_from(
            ["garbage", "truncated", "oversized", "other_round", "no_round", "no_key"]
        ),
        seed=st.integers(0, 2**16),
    )
    def refused_upload(self, d: int, how: str, seed: int) -> None:
        FIRED[f"refused/{how}"] += 1
        r = self.assigned.get(d, 1)
        frame = encode_update(seed)
        if how == "garbage":
            frame = np.random.default_rng(seed).bytes(64)
        elif how == "truncated":
            frame = frame[: len(frame) // 2]
        elif how == "oversized":
            cap = self.coord.upload_cap_for_round(r) or self.svc.config.json_body_cap
            frame = bytes(cap + 1)
        if how == "no_round":
            response = self.upload(d, UNKNOWN_ROUND, frame, self.new_key())
            owed: tuple[int, str | None] = (
                (401, Reason.UNREGISTERED)
                if d not in self.registered
                else (404, Reason.UNKNOWN_ROUND)
            )
        elif how == "other_round":
            response = self.upload(d, r, frame, self.new_key(), signed_round=r + 1)
            owed = (
                (401, Reason.UNREGISTERED)
                if d not in self.registered
                else (403, Reason.ROUND_MISMATCH)
            )
        elif how == "no_key":
            response = self.upload(d, r, frame, None)
            owed = (
                (401, Reason.UNREGISTERED) if d not in self.registered else (400, Reason.MALFORMED)
            )
        elif how == "oversized":
            response = self.upload(d, r, frame, self.new_key())
            owed = (413, Reason.TOO_LARGE)
            if d not in self.registered and response.status_code == 401:
                owed = (401, Reason.UNREGISTERED)  # the key is looked up first
        else:
            owed = self.expected_upload(r, d)
            if owed[0] == 200 or (owed[0] == 409 and owed[1] == Reason.DUPLICATE_UPLOAD):
                # find_update compares frames: another frame after an upload is a duplicate;
                # before, the decoder refuses it
                owed = (
                    (409, Reason.DUPLICATE_UPLOAD)
                    if (r, d) in self.receipts
                    else (422, Reason.BAD_FRAME)
                )
            response = self.upload(d, r, frame, self.new_key())
        assert (response.status_code, response.json()["reason"]) == owed, (how, response.text)

    @rule(dt=st.sampled_from([0.0, 1.0, 6.0, 31.0]))
    def time_passes(self, dt: float) -> None:
        """The event loop catches up (a tick, then the closes due), `dt` seconds later."""
        FIRED[f"time_passes/{dt:g}"] += 1
        self.clock.now += dt
        self.trace.append(f"time +{dt}, settle")
        self.svc.settle()

    @rule(dt=st.sampled_from([6.0, 31.0, 61.0]))
    def clock_jumps(self, dt: float) -> None:
        """Time passes before the event loop ticks: requests meet a round past its deadline
        that nothing closed yet, and devices that left the pool (61 s > pool_ttl_s)."""
        FIRED[f"clock_jumps/{dt:g}"] += 1
        self.trace.append(f"time +{dt}")
        self.clock.now += dt

    @rule(paused=st.booleans())
    def pause_or_resume(self, paused: bool) -> None:
        FIRED[f"pause={paused}"] += 1
        before = self.coord.task_status(self.task_id).state
        path = P.ADMIN_PAUSE if paused else P.ADMIN_RESUME
        r = self.admin("POST", path.format(task_id=self.task_id))
        if before == "done":
            assert r.status_code == 409 and r.json()["reason"] == Reason.INVALID_STATE, r.text
            return
        assert r.status_code == 200, r.text
        state = r.json()["state"]
        rt = self.coord.runtimes[self.task_id]
        if paused:
            assert state == "paused"
        else:
            finished = rt.rounds_closed >= TASK.rounds and rt.current is None
            assert state == ("done" if finished else "active"), (before, state)

    @rule(crash=st.booleans(), now=st.integers(0, 2))
    def restart(self, crash: bool, now: int) -> None:
        if now:  # a restart costs a server start: one step in three
            return
        FIRED[f"restart/crash={crash}"] += 1
        self.trace.append(f"restart crash={crash}")
        self.svc.stop(crash=crash)
        self.svc.start()

    @rule(now=st.integers(0, 1))
    def crash_while_aggregating(self, now: int) -> None:
        """A crash inside a due close, after the round froze (`aggregating` in the store)."""
        if not now:  # a restart costs a server start: one step in two
            self.crash_mid_close("frozen")

    @rule(now=st.integers(0, 1))
    def crash_after_publish(self, now: int) -> None:
        """A crash inside a due close, after its publish (or abandonment) committed but before
        the event loop served the new model."""
        if not now:
            self.crash_mid_close("published")

    def crash_mid_close(self, stage: str) -> None:
        due = [rt for rt in self.svc.deferred + self.coord.tick() if rt.current is not None]
        if not due:
            return
        FIRED[f"crash_mid_close/{stage}"] += 1
        self.trace.append(f"crash {stage}")
        cur = self.coord.begin_close(due[0])
        if cur is not None and stage == "published":
            self.coord.close_blocking(due[0], cur)
        self.svc.stop(crash=True)
        self.svc.start()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def nothing_failed_in_the_log(self) -> None:
        assert not self.errors.records, self.errors.records

    @invariant()
    def uploads_counted_once(self) -> None:
        if not hasattr(self, "task_id"):
            return
        store = self.svc.store
        for row in store.rounds(self.task_id):
            r = row.round_id
            mine = sorted(DEVICE_IDS[d] for (rr, d) in self.receipts if rr == r)
            stored = sorted(u.device_id for u in store.updates(r))
            assert stored == mine, (r, stored, mine)  # each receipt once; none without one
            status = self.coord.round_status(r)
            assert status.reports == len(mine), (r, status)
            if status.state == "committed":
                assert status.measurements["total_weight"] == WEIGHT * len(mine)
            for dev in mine:
                assert str(self.coord.upload_outcome(r, dev)) == self.outcome_owed(r)

    @invariant()
    def ledger_matches_the_wire(self) -> None:
        if not hasattr(self, "task_id"):
            return
        rounds = {r for (r, _, _) in self.ledger} | {
            row.round_id for row in self.svc.store.rounds(self.task_id)
        }
        for r in rounds:
            got = {
                (rid, dev, direction): [p, w, dense, n]
                for rid, dev, direction, p, w, dense, n in self.svc.store.ledger_rows(r)
            }
            want = {k: v for k, v in self.ledger.items() if k[0] == r}
            assert got == want, (r, got, want, self.trace)

    @invariant()
    def versions_grow_and_the_model_matches(self) -> None:
        if not hasattr(self, "task_id"):
            return
        rt = self.coord.runtimes[self.task_id]
        assert rt.version >= self.max_version
        self.max_version = rt.version
        assert self.digests.setdefault(rt.version, rt.digest) == rt.digest
        assert model_digest(decode_snapshot(rt.snapshot("fp32"), SPEC)).hex() == rt.digest
        committed = self.svc.store.rounds(self.task_id, ("committed",))
        assert rt.version == len(committed)  # fedavg: one version per committed round
        for v, digest in self.digests.items():
            assert self.svc.store.version_digest(self.task_id, v) == digest, v
        row = self.svc.store.task(self.task_id)
        assert row is not None and (row.version, row.digest) == (rt.version, rt.digest)


PlainServiceMachine.TestCase.settings = settings(
    max_examples=10,
    stateful_step_count=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestPlainServiceMachine = PlainServiceMachine.TestCase


class PrunedServiceMachine(PlainServiceMachine):
    """The same, with `keep_frames_rounds=0`: closed rounds' frames emptied at every close and
    start, which retries, outcomes, restarts and delta downloads must not notice."""

    keep_frames = 0


PrunedServiceMachine.TestCase.settings = settings(
    PlainServiceMachine.TestCase.settings, max_examples=4
)
TestPrunedServiceMachine = PrunedServiceMachine.TestCase


@pytest.mark.slow
@pytest.mark.parametrize("machine", [PlainServiceMachine, PrunedServiceMachine])
def test_the_service_machines_explore_longer(machine: type[PlainServiceMachine]) -> None:
    """The same machine, longer runs (`make test-all`); prints the rules that fired."""
    from hypothesis.stateful import run_state_machine_as_test

    FIRED.clear()
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=150,
            stateful_step_count=60,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    print(dict(sorted(FIRED.items())))


def replay(m: Any, steps: list[tuple[str, dict[str, Any]]], checks: list[Any]) -> None:
    """Run `steps` (rule name, arguments) on the fresh machine `m` after its task is created,
    each of `checks` after each step, as hypothesis does; `m` is torn down at the end."""
    try:
        m.create_task()
        for name, kwargs in steps:
            getattr(m, name)(**kwargs)
            for check in checks:
                check()
    finally:
        m.teardown()


def run_steps(steps: list[tuple[str, dict[str, Any]]], machine: Any = PlainServiceMachine) -> None:
    """Run `steps` (rule name, arguments) on a fresh machine, checking every invariant after
    each, as hypothesis does; a known path stays covered whatever the search draws."""
    m = machine()
    checks = [
        m.nothing_failed_in_the_log,
        m.uploads_counted_once,
        m.ledger_matches_the_wire,
        m.versions_grow_and_the_model_matches,
    ]
    replay(m, steps, checks)


def test_a_crash_while_a_round_aggregates_keeps_its_uploads_counted() -> None:
    # Round 1 full (two receipts), frozen `aggregating` by its close, then the process dies:
    # the restart replays both uploads, counts them, and the close it owes publishes them.
    run_steps(
        [
            ("fleet_checks_in", {"train": {0, 1, 2}, "seed": 1}),
            ("fleet_checks_in", {"train": {0, 1, 2}, "seed": 2}),
            ("crash_mid_close", {"stage": "frozen"}),
            ("time_passes", {"dt": 0.0}),
            ("fleet_checks_in", {"train": set(), "seed": 0}),
        ]
    )


def test_a_crash_after_a_publish_serves_the_published_model() -> None:
    # The publish committed, the process died before serving it: after the restart the store's
    # version is served, the uploads are `committed`, and a retry is still a duplicate.
    run_steps(
        [
            ("fleet_checks_in", {"train": {0, 1, 2}, "seed": 3}),
            ("fleet_checks_in", {"train": {0, 1, 2}, "seed": 4}),
            ("crash_mid_close", {"stage": "published"}),
            ("download", {"d": 0, "how": "auto"}),
            ("check_in", {"d": 0, "ask": True}),
            ("retry", {"r": 1, "d": 0, "how": "same"}),
            ("retry", {"r": 1, "d": 2, "how": "other_key"}),
        ]
    )


def test_a_restart_mid_round_keeps_receipts_nonces_and_the_deadline() -> None:
    # One upload in an open round, a clean restart and a crash: the retry is the same receipt,
    # the pre-restart request is still a replay, and the deadline abandons the round (its
    # device told `abandoned`).
    run_steps(
        [
            ("fleet_checks_in", {"train": {2}, "seed": 5}),
            ("restart", {"crash": False, "now": 0}),
            ("retry", {"r": 1, "d": 2, "how": "same"}),
            ("replay_of", {"d": 2}),
            ("restart", {"crash": True, "now": 0}),
            ("replay_of", {"d": 2}),
            ("time_passes", {"dt": 31.0}),
            ("check_in", {"d": 2, "ask": True}),
        ],
        PrunedServiceMachine,
    )
