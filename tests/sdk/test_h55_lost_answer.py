"""A SecAgg+ masked input the coordinator took, whose answer the device then lost: a read
timeout, a 5xx, a 200 that is no receipt, or a refusal of a retry after an attempt that may have
landed. The coordinator holds the input, so the round may commit with it: the device must keep
the record of what the input stood for and leave it to the check-in's `round_outcome` (as a
plain upload's record), not take the residual back at once. Before, it did take it back, so a
round that committed got the input's content a second time from a later round (counted twice).
Against a real coordinator on loopback; device 0's network path forwards its masked input, then
loses the answer. Also, unit checks of what `_send` says about whether a request may have been
taken (`_Exchange.maybe_taken`), for `Client` and `AsyncClient`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from compression import CodecConfig, ErrorFeedback, UpdateCodec
from protocol.secagg import Stage
from sdk import AsyncClient, Client
from sdk.client import ClientError, SecureRoundReport, _Exchange
from sdk.device_store import DeviceStore
from tests.coordinator.test_service_support import await_assignment

from .test_client_abandoned_round import (
    SECURE_SPEC,
    _await_state,
    _driven_secure_task,
    _expire_stage,
    _residual,
)
from .test_client_abandoned_round import url as url  # noqa: F401  (the loopback fixture)

OLD = 0.3  # device 0's residual before the round: the masked input carries it
DELTA = 0.2  # every device's update
COHORT = 5  # a group of three cannot recover one device's missing unmask shares


def _loser(how: str) -> Callable[[httpx.Request, Callable[..., Any]], Any]:
    """A client mod that forwards the masked input to the coordinator (which takes it) and then
    loses the answer `how`; every other request passes."""
    attempts: list[int] = []

    def mod(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        if not (request.method == "POST" and request.url.path.endswith("/masked-input")):
            return nxt(request)
        attempts.append(1)
        if how == "late_refusal" and len(attempts) > 1:
            # The retry is refused (the round's deadline passed): the first attempt landed
            closed = {"reason": "round_closed", "detail": "the deadline passed"}
            return httpx.Response(409, json=closed, request=request)
        response = nxt(request)
        response.read()
        assert response.status_code == 200, response.text
        if how == "garbage":
            return httpx.Response(200, content=b"<html>sign in</html>", request=request)
        if how == "bad_gateway":
            return httpx.Response(502, content=b"bad gateway", request=request)
        raise httpx.ReadTimeout("the answer never came", request=request)

    return mod


def _lost_answer_round(
    url: str, root: Path, task_id: int, how: str, others_drop: bool
) -> tuple[Client, int, SecureRoundReport | BaseException | None]:
    """One secure round of COHORT devices; device 0 (app directory `root`, residual OLD) loses
    its masked input's answer `how`. The others finish the round (or, with `others_drop`, go
    silent before unmask). Returns (device 0's client, still open, the round id, its result)."""
    ef = ErrorFeedback(SECURE_SPEC.size)
    ef.residual = np.full(SECURE_SPEC.size, OLD, np.float32)
    DeviceStore(root).save_residual(ef, task_id)
    victim = Client(url, str(root), mods=(_loser(how),), retries=1, backoff_s=0.01)
    clients = [victim] + [Client(url, str(root.parent / f"o{i}")) for i in range(COHORT - 1)]
    for c in clients:
        c.register()
    delta = np.full(SECURE_SPEC.size, DELTA, np.float32)
    out: list[SecureRoundReport | BaseException | None] = [None] * COHORT

    def run(i: int) -> None:
        a = await_assignment(clients[i], task_id)
        drop = Stage.UNMASK if others_drop and i > 0 else None
        try:
            out[i] = clients[i].secure_round(a, lambda p: (delta, 8, 0.0), drop_at=drop)
        except Exception as exc:  # noqa: BLE001 - device 0's lost answer, asserted on
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(COHORT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in clients[1:]:
        c.close()
    r1 = out[1]
    assert isinstance(r1, SecureRoundReport) and r1.completed is (not others_drop), r1
    return victim, r1.round_id, out[0]


def _record(root: Path, round_id: int) -> npt.NDArray[np.float32]:
    record = DeviceStore(root).load_accepted(round_id)
    assert record is not None, "no record of the masked input"
    return UpdateCodec(record.spec, CodecConfig.dense()).decode(record.frame).to_dense()


def _check_lost(result: SecureRoundReport | BaseException | None, how: str) -> None:
    """Device 0's round ended at the lost answer: the error naming it, or a report."""
    if how == "read_timeout":
        assert isinstance(result, httpx.ReadTimeout), result
    elif how == "late_refusal":
        assert isinstance(result, SecureRoundReport) and not result.completed, result
        assert result.stages == ["advertise-keys", "share-keys"]
    elif how == "garbage":
        assert isinstance(result, ClientError) and result.reason == "bad_response", result
    else:
        assert isinstance(result, ClientError) and result.status == 502, result


LOST = ["garbage", "read_timeout", "bad_gateway", "late_refusal"]


@pytest.mark.parametrize("how", LOST)
def test_a_lost_answer_keeps_the_record_and_a_committed_round_counts_the_input_once(
    url: str, tmp_path: Path, how: str
) -> None:
    # Prepare: device 0's input is taken but its answer lost; the round commits with it, once
    # its unmask stage (device 0 sends nothing to it) times out with the others' answers.
    # Stages time out on the test's clock: every device uploads the three before unmask, which
    # close as soon as all did, however slow the machine
    task_id, clock = _driven_secure_task(url, cohort=COHORT)
    root = tmp_path / "d0"
    victim, round_id, result = _lost_answer_round(url, root, task_id, how, others_drop=False)
    _check_lost(result, how)
    left = _residual(root, SECURE_SPEC.size, task_id)
    sent = _record(root, round_id)
    _expire_stage(url, task_id, clock, Stage.UNMASK, COHORT - 1)
    _await_state(url, round_id, "committed")

    # Execute: device 0 checks in, in the same process
    answer = victim.check_in(task_id)

    # Assert: the round holds the input, so the record goes and the residual keeps only what
    # the input did not carry: the input's content and the residual add up to OLD + DELTA, once.
    # Before, the residual was taken back to OLD at once, and the next round sent it again
    np.testing.assert_allclose(left + sent, OLD + DELTA, atol=1e-6)
    assert not np.allclose(left, OLD)
    assert answer.round_outcome == "committed"
    assert DeviceStore(root).load_accepted(round_id) is None
    np.testing.assert_array_equal(_residual(root, SECURE_SPEC.size, task_id), left)
    participant = victim._core.secure_participant(SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(participant.residual, left)
    victim.close()


@pytest.mark.parametrize("how", ["garbage", "read_timeout"])
def test_a_lost_answer_in_an_abandoned_round_returns_the_input_once(
    url: str, tmp_path: Path, how: str
) -> None:
    # Prepare: device 0's input is taken but its answer lost; the others go silent before
    # unmask, so the round is abandoned when that stage times out (on the test's clock)
    task_id, clock = _driven_secure_task(url, cohort=COHORT)
    root = tmp_path / "d0"
    victim, round_id, result = _lost_answer_round(url, root, task_id, how, others_drop=True)
    _check_lost(result, how)
    left = _residual(root, SECURE_SPEC.size, task_id)
    sent = _record(root, round_id)
    _expire_stage(url, task_id, clock, Stage.UNMASK, 0)
    _await_state(url, round_id, "abandoned")

    # Execute: device 0 checks in twice
    first = victim.check_in(task_id)
    second = victim.check_in(task_id)

    # Assert: what the input stood for is back in the residual once (OLD + DELTA), on disk and
    # in memory. Before, the residual went back to OLD at once and nothing was left to settle
    assert first.round_outcome == "abandoned" and second.round_outcome is None
    settled = _residual(root, SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(settled, (left + sent).astype(np.float32))
    np.testing.assert_allclose(settled, OLD + DELTA, atol=1e-6)
    participant = victim._core.secure_participant(SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(participant.residual, settled)
    victim.close()


# -- what `_send` says about a request's fate ------------------------------------------------


def _exchange() -> _Exchange:
    return _Exchange("POST", "/v1/rounds/7/secure/stages/masked-input", 7, b"x")


CASES: list[tuple[str, list[str], bool]] = [
    # (name, what each attempt meets, maybe taken)
    ("connect_error", ["connect"], False),
    ("connect_timeout_then_refused", ["connect_timeout", "409"], False),
    ("refused", ["403"], False),
    ("rate_limited_then_refused", ["429", "409"], False),
    ("read_timeout", ["read_timeout"], True),
    ("read_timeout_then_refused", ["read_timeout", "409"], True),
    ("bad_gateway_then_refused", ["502", "409"], True),
    ("bad_gateway", ["502", "502"], True),
    ("answered", ["200"], True),
    ("connect_error_then_answered", ["connect", "200"], True),
]


def _answer(step: str, request: httpx.Request) -> httpx.Response:
    if step == "connect":
        raise httpx.ConnectError("refused", request=request)
    if step == "connect_timeout":
        raise httpx.ConnectTimeout("no route", request=request)
    if step == "read_timeout":
        raise httpx.ReadTimeout("no answer", request=request)
    status = int(step)
    body = {"reason": "round_closed", "detail": "x"} if status >= 400 else {}
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(("name", "steps", "taken"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_send_tells_whether_the_request_may_have_been_taken(
    tmp_path: Path, name: str, steps: list[str], taken: bool, kind: str
) -> None:
    # Prepare: a transport whose attempts meet `steps` in turn
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(steps[len(seen)])
        return _answer(seen[-1], request)

    async def ahandler(request: httpx.Request) -> httpx.Response:
        return handler(request)

    ex = _exchange()

    # Execute
    try:
        if kind == "sync":
            client = Client(
                "http://coord", str(tmp_path), transport=httpx.MockTransport(handler),
                retries=len(steps) - 1, backoff_s=0.0, sleep=lambda s: None,
            )  # fmt: skip
            with client:
                client._send(ex)
        else:

            async def go() -> None:
                async with AsyncClient(
                    "http://coord", str(tmp_path), transport=httpx.MockTransport(ahandler),
                    retries=len(steps) - 1, backoff_s=0.0,
                ) as client:  # fmt: skip
                    await client._send(ex)

            asyncio.run(go())
    except httpx.TransportError:
        pass

    # Assert
    assert seen == steps
    assert ex.maybe_taken is taken
