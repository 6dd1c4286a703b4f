"""docs/devices.md's claims about a secure round whose answers a hostile or broken coordinator
(or a body-rewriting proxy) changed, as a property over mutations of a real round's answers, as
the SDK's secure flow reads them over HTTP (`sdk.client._secure_flow`, `sdk.secure`): the setup,
each stage upload's receipt, each stage's wait (425) and its download (key directory, share
delivery, unmask request).

The round is recorded once from a loopback coordinator (three devices; the others' stage
uploads wait until the recorded device has polled each stage once, so every download is first
answered "still open"), with each device's SecAgg+ keys derived from its node and round (the
key directory and the share delivery name the recorded device's keys, so a replay of its
answers must meet the same keys). Each example replays the recorded device's answers from a copy
of its app directory, one of them mutated: `participate` ends with a `SecureRoundReport` or a
`ClientError` / `SecAggError` (never a bare KeyError, TypeError, IndexError, OverflowError or
another ValueError), no wait asked for passes the round's deadline, the app directory still
loads, and a later honest replay on it completes. The loopback device of the tests
(`sdk.secure.HttpSecureDevice`) is held to the same answers: a `SecAggError` or its result, and
its participant then runs an honest round."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from compression import encode_snapshot
from protocol.secagg import AdvertiseKeys, SecAggError, Stage
from protocol.secagg import _client as secagg_client
from protocol.secagg._crypto import public_key_of
from sdk import AsyncClient, Client
from sdk.client import ClientError, SecureRoundReport
from sdk.device_store import DeviceStore
from sdk.secure import HttpSecureDevice, SecureParticipant
from tests.protocol.test_s57b_hostile_downloads import _mutated as mutated_message

from .test_client_hostile_server import Sleeps
from .test_client_secure import ADMIN, SPEC, ShiftTrainer, _data, _task
from .test_s57g_hostile_answers import HEADER_TEXT, _response, mutated_bytes, mutated_json

Answer = tuple[int, dict[str, bytes], bytes]  # status, headers, body
Key = tuple[str, str]  # method, path
SECURE = "/v1/secure/"
CHECK_IN: Key = ("POST", "/v1/checkin")
# Each example makes an app directory, whose writes fsync: in memory where the system has it.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
DEADLINE_S = 30.0  # `_task`'s round deadline
# The longest a replayed device polls one stage (`max_stage_wait_s`, a day by default), so that
# a stage answered "still open" for ever costs 100 polls of 0.05 s, not 600 to the deadline.
STAGE_WAIT_S = 5.0
PROPERTY = settings(
    max_examples=150,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
HEAVY = settings(PROPERTY, max_examples=1000)


# -- the recorded round --------------------------------------------------------------------------


_advertise = secagg_client._advertise


def _fixed_advertise(state: Any) -> AdvertiseKeys:
    """`protocol.secagg._client._advertise` with the device's key pairs and self-mask seed
    derived from its node and round instead of drawn: a replay of a device's answers meets the
    keys the recorded key directory and share delivery were made for."""
    _advertise(state)
    seed = hashlib.sha256(b"s58b %d %d" % (state.node, state.params.round_id)).digest()
    state.enc_private = hashlib.sha256(seed + b"enc").digest()
    state.mask_private = hashlib.sha256(seed + b"mask").digest()
    state.enc_public = public_key_of(state.enc_private)
    state.mask_public = public_key_of(state.mask_private)
    state.self_seed = hashlib.sha256(seed + b"self").digest()
    return AdvertiseKeys(state.params.round_id, state.node, state.enc_public, state.mask_public)


@dataclasses.dataclass(frozen=True)
class Recording:
    """One device's side of a real secure round: its app directory as registered (before the
    round), its "train" check-in answer, and every other answer it got, in order, per request."""

    template: Path
    check_in: Answer
    answers: dict[Key, list[Answer]]

    def now(self) -> float:
        """The wall clock of a replay: the time the "train" check-in was answered (its
        `Date`), so that the round's deadline is as far off as it was then."""
        return email.utils.parsedate_to_datetime(self.check_in[1]["date"].decode()).timestamp()

    def secure(self) -> list[tuple[Key, int]]:
        """Every secure-round answer, as (request, its index among that request's answers)."""
        return [
            (key, i)
            for key, answers in sorted(self.answers.items())
            if key[1].startswith(SECURE)
            for i in range(len(answers))
        ]


def _answer(response: httpx.Response) -> Answer:
    drop = {"server", "content-length"}
    headers = {k: v.encode("latin-1") for k, v in response.headers.items() if k not in drop}
    return response.status_code, headers, response.content


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """One round of `_task(rounds=1)` (three devices) on a loopback coordinator, device 0's
    answers recorded."""
    from coordinator.service import ServerThread, ServiceConfig

    tmp = tmp_path_factory.mktemp("s58b")
    cfg = ServiceConfig(db_path=str(tmp / "p.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02)
    got: list[tuple[Key, Answer]] = []
    polled = {stage: threading.Event() for stage in Stage}

    def record(request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        response = nxt(request)
        key = (request.method, request.url.path)
        got.append((key, _answer(response)))
        if request.method == "GET" and "/stages/" in key[1]:
            polled[Stage(key[1].rsplit("/", 1)[1])].set()
        return response

    def wait_for_device_0(request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        # The others upload a stage only once device 0 has polled it (a 425: still open).
        path = request.url.path
        if request.method == "POST" and "/stages/" in path:
            stage = Stage(path.rsplit("/", 1)[1])
            if stage != Stage.UNMASK:
                assert polled[stage].wait(30), f"device 0 never polled {stage}"
        return nxt(request)

    x, y = _data()
    out: list[Any] = [None] * 3

    def device(i: int, url: str, task_id: int) -> None:
        try:
            mods = (record,) if i == 0 else (wait_for_device_0,)
            with Client(url, str(tmp / f"d{i}"), mods=mods) as client:
                if i:
                    client.register()
                out[i] = client.participate(ShiftTrainer(0.01 * (i + 1)), x, y, task_id=task_id)
        except BaseException as exc:  # checked below
            out[i] = exc

    with mock.patch.object(secagg_client, "_advertise", _fixed_advertise), ServerThread(cfg) as url:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}) as http:
            task_id = int(http.post("/v1/admin/tasks", json=_task(rounds=1)).json()["task_id"])
            snap = encode_snapshot(np.zeros(SPEC.size, np.float32), SPEC, "fp32")
            octet = {"content-type": "application/octet-stream"}
            assert http.put(f"/v1/admin/tasks/{task_id}/model", content=snap, headers=octet)
        with Client(url, str(tmp / "d0")) as client:
            client.register()
        shutil.copytree(tmp / "d0", tmp / "template")
        threads = [threading.Thread(target=device, args=(i, url, task_id)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert all(isinstance(r, SecureRoundReport) and r.completed for r in out), out
    answers: dict[Key, list[Answer]] = {}
    trains = [a for k, a in got if k == CHECK_IN and json.loads(a[2])["action"] == "train"]
    for key, answer in got:
        if key != CHECK_IN:
            answers.setdefault(key, []).append(answer)
    # Every stage's download was answered "still open" first, then with its message.
    downloads = [a for k, a in answers.items() if k[0] == "GET" and "/stages/" in k[1]]
    assert [[s for s, _, _ in a][-2:] for a in downloads] == [[425, 200]] * 3, answers
    return Recording(tmp / "template", trains[-1], answers)


@dataclasses.dataclass(frozen=True)
class Mutation:
    """The answer to the `at`-th request `key` (from 0) replaced by `answer`; with `every`,
    the answers to later requests `key` too."""

    key: Key
    at: int
    answer: Answer
    every: bool = False


# -- replay --------------------------------------------------------------------------------------


class Replay:
    """A coordinator that answers as the recorded one did: each check-in with the recorded
    "train" answer (with `round_outcome` "committed", the recorded round's outcome, when the
    check-in asks about a round), and the n-th request of each other kind with its n-th
    recorded answer (the last one past them: a download fetched again gets its message again),
    except `mutated`, which replaces one (request, index)'s answer, and with `every` the
    answers past it too (a download fetched again gets the mutated copy again)."""

    def __init__(self, rec: Recording, kind: str, mutated: Mutation | None) -> None:
        self.rec, self.kind, self.mutated = rec, kind, mutated
        self.counts: Counter[Key] = Counter()
        # Every wait the device asked for (`sleep=` of a Client, `_apause` of an AsyncClient):
        # not waited, as the answers after it are recorded already, but counted on the SDK's
        # steady clock (`tick`), which deadlines and stage polls read.
        self.waits = Sleeps()

    async def pause(self, seconds: float) -> None:
        self.waits(seconds)

    def tick(self) -> float:
        """`sdk.client._tick` for a replay: the steady clock plus every wait not waited."""
        return time.monotonic() + sum(self.waits)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        if key == CHECK_IN:
            status, headers, body = self.rec.check_in
            awaiting = json.loads(request.content).get("awaiting_round")
            if awaiting is not None:
                doc = json.loads(body)
                body = json.dumps({**doc, "round_outcome": "committed"}).encode()
            return _response((status, headers, body), self.kind)
        assert key in self.rec.answers, f"a request the recorded device never made: {key}"
        answers, at = self.rec.answers[key], self.counts[key]
        self.counts[key] += 1
        answer = answers[min(at, len(answers) - 1)]
        m = self.mutated
        if m is not None and m.key == key and (at == m.at or (m.every and at > m.at)):
            answer = m.answer
        return _response(answer, self.kind)


def _participate(root: Path, replay: Replay) -> Any:
    """`participate` of a `replay.kind` client on `root` whose coordinator is `replay`."""
    x, y = _data()

    async def run() -> Any:
        async_transport = httpx.MockTransport(replay)
        async with AsyncClient(
            "http://coord",
            str(root),
            transport=async_transport,
            clock=replay.rec.now,
            max_stage_wait_s=STAGE_WAIT_S,
        ) as c:
            return await c.participate(ShiftTrainer(0.01), x, y, task_id=1)

    with (
        mock.patch.object(secagg_client, "_advertise", _fixed_advertise),
        mock.patch("sdk.client._tick", replay.tick),
    ):
        if replay.kind == "sync":
            transport = httpx.MockTransport(replay)
            with Client(
                "http://coord",
                str(root),
                transport=transport,
                sleep=replay.waits,
                clock=replay.rec.now,
                max_stage_wait_s=STAGE_WAIT_S,
            ) as c:
                return c.participate(ShiftTrainer(0.01), x, y, task_id=1)
        with mock.patch("sdk.client._apause", replay.pause):
            return asyncio.run(run())


@contextmanager
def _app(rec: Recording) -> Iterator[Path]:
    """A copy of the recorded device's app directory as registered (hypothesis runs many
    examples in one test: each gets its own)."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        root = Path(tmp) / "app"
        shutil.copytree(rec.template, root)
        yield root


def _loads(root: Path) -> None:
    """Everything the app directory holds for the task reads (a `DeviceStoreError` fails)."""
    with DeviceStore(root) as store:
        assert store.state()["device_id"]
        store.load_model(1, SPEC.size)
        store.load_residual(SPEC.size, 1, SPEC)
        store.load_pending()
        for round_id in store.accepted_rounds():
            store.load_accepted(round_id)


# -- mutations -----------------------------------------------------------------------------------

STATUSES = [200, 201, 204, 302, 400, 403, 404, 409, 410, 413, 425, 429, 500, 503]
REFUSALS = ["round_closed", "not_selected", "invalid_state", "busy", "unregistered"]


@st.composite
def mutations(draw: st.DrawFn, rec: Recording) -> tuple[Mutation, str]:
    """One of the recorded secure answers with its body, a header or its status changed (a
    JSON body by `mutated_json`, a binary message by the protocol test's field rewrites or by
    `mutated_bytes`), or replaced by another of them, for that answer alone or, for a
    request's last answer, every later answer to it too; and a label for it."""
    key, at = draw(st.sampled_from(rec.secure()))
    status, headers, body = rec.answers[key][at]
    headers = dict(headers)
    what = draw(st.sampled_from(["body", "body", "body", "other", "header", "status"]))
    if what == "other":
        # Another answer of the round in its place (another stage's message, a receipt, ...)
        other, other_at = draw(st.sampled_from(rec.secure()))
        status, headers, body = rec.answers[other][other_at]
        headers = dict(headers)
    elif what == "body":
        if headers.get("content-type", b"").startswith(b"application/json"):
            body = draw(mutated_json(body))
        else:
            body = draw(mutated_message(body) | mutated_bytes(body))
    elif what == "header":
        name = draw(st.sampled_from(sorted({*headers, "content-encoding", "retry-after"})))
        if draw(st.booleans()):
            headers.pop(name, None)
        else:
            headers[name] = draw(HEADER_TEXT)
    else:
        status = draw(st.sampled_from(STATUSES))
        if draw(st.booleans()):
            # The body of one of the coordinator's refusals that end a device's round
            reason = draw(st.sampled_from(REFUSALS))
            body = json.dumps({"reason": reason, "detail": f"a {reason} answer"}).encode()
            headers["content-type"] = b"application/json"
    every = at == len(rec.answers[key]) - 1 and draw(st.booleans())
    label = f"{key[0]} {key[1].rsplit('/', 1)[1]} {rec.answers[key][at][0]} {what}"
    return Mutation(key, at, (status, headers, body), every), label + " every" * every


# -- the property ---------------------------------------------------------------------------------


def _check(rec: Recording, data: st.DataObject, kind: str) -> None:
    mutated, label = data.draw(mutations(rec))
    with _app(rec) as root:
        replay = Replay(rec, kind, mutated)
        # Execute
        try:
            got = _participate(root, replay)
        except (ClientError, SecAggError) as exc:
            event(f"{kind} {label}: {type(exc).__name__} {getattr(exc, 'reason', '')}")
        else:
            # Assert: no other exception escaped (it fails the test as it is); a report
            assert isinstance(got, SecureRoundReport), got
            event(f"{kind} {label}: {'completed' if got.completed else 'not completed'}")
        # Assert: the round ended for the device by its deadline (`deadline_s` 30 after the
        # round opened, read against the check-in's `Date`, whole seconds: 1 s more at most),
        # however long the waits asked for
        assert sum(replay.waits) <= DEADLINE_S + 1.0, replay.waits
        # Assert: the app directory loads, and an honest round on it completes
        _loads(root)
        again = _participate(root, Replay(rec, kind, None))
        assert isinstance(again, SecureRoundReport) and again.completed, again
        _loads(root)


@PROPERTY
@given(data=st.data(), kind=st.sampled_from(["sync", "async"]))
def test_a_mutated_secure_answer_ends_in_a_report_or_a_documented_error(
    recording: Recording, data: st.DataObject, kind: str
) -> None:
    # docs/devices.md: "sdk.ClientError ... an answer it cannot use"; "SecAggError ... the
    # coordinator sent a plan or stage bytes the SecAgg+ protocol refuses"; "The app directory
    # keeps what it held"
    _check(recording, data, kind)


@pytest.mark.slow
@HEAVY
@given(data=st.data(), kind=st.sampled_from(["sync", "async"]))
def test_a_mutated_secure_answer_ends_in_a_report_or_a_documented_error_at_length(
    recording: Recording, data: st.DataObject, kind: str
) -> None:
    _check(recording, data, kind)


# -- the loopback device (`sdk.secure.HttpSecureDevice`) ------------------------------------------

PARAMS = np.zeros(SPEC.size, np.float32)  # the round's model: the task's initial one


def _device_round(rec: Recording, replay: Replay, participant: SecureParticipant) -> bool:
    """`HttpSecureDevice.run_round` of the recorded round by `participant`, its coordinator
    `replay` (the same paths: `SecAggPath`)."""
    with (
        mock.patch.object(secagg_client, "_advertise", _fixed_advertise),
        mock.patch("sdk.client._tick", replay.tick),
        mock.patch("sdk.secure.time", SimpleNamespace(sleep=replay.waits)),
        httpx.Client(base_url="http://coord", transport=httpx.MockTransport(replay)) as http,
    ):
        device = HttpSecureDevice(http, "dev-0", participant)
        delta = np.full(SPEC.size, 0.01, np.float32)
        rng = np.random.default_rng(0)
        return device.run_round(1, PARAMS, delta, 8, rng, timeout_s=STAGE_WAIT_S)


@settings(PROPERTY, max_examples=50)
@given(data=st.data())
def test_a_mutated_secure_answer_is_a_sec_agg_error_for_the_loopback_device(
    recording: Recording, data: st.DataObject
) -> None:
    _check_device(recording, data)


@pytest.mark.slow
@settings(HEAVY, max_examples=500)
@given(data=st.data())
def test_a_mutated_secure_answer_is_a_sec_agg_error_for_the_loopback_device_at_length(
    recording: Recording, data: st.DataObject
) -> None:
    _check_device(recording, data)


def _check_device(recording: Recording, data: st.DataObject) -> None:
    # sdk.secure.HttpSecureDevice: a refusal is a `SecAggError` (`ResponseTooLarge`,
    # `RoundAborted`, `ProtocolViolation`, ...); its participant stays usable
    mutated, label = data.draw(mutations(recording))
    participant = SecureParticipant(SPEC.size)
    replay = Replay(recording, "sync", mutated)
    # Execute
    try:
        done = _device_round(recording, replay, participant)
    except SecAggError as exc:
        event(f"{label}: {type(exc).__name__}")
    else:
        event(f"{label}: {'completed' if done else 'left behind'}")
    # Assert: each of the three downloads polled for `timeout_s` at most
    assert sum(replay.waits) <= 3 * STAGE_WAIT_S, replay.waits
    # Assert: the residual is finite (what was sent is settled by the caller), and an honest
    # round with the participant completes
    assert participant.residual.shape == (SPEC.size,)
    assert np.all(np.isfinite(participant.residual))
    participant.return_sent()
    assert _device_round(recording, Replay(recording, "sync", None), participant)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_honest_replay_completes(recording: Recording, kind: str) -> None:
    # The replay itself: unmutated, the recorded answers take the device through the round
    with _app(recording) as root:
        got = _participate(root, Replay(recording, kind, None))
        assert isinstance(got, SecureRoundReport) and got.completed, got
        assert got.stages == ["advertise-keys", "share-keys", "masked-input", "unmask"]
