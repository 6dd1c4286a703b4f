"""Check-in answers carrying another task's assignment.

A check-in that names an `awaiting_round` gets that round's outcome in `round_outcome`, whatever
assignment the answer carries. Before, an assignment for another task than the one asked for
made the client refuse the whole answer (bad_response) before it settled the outcome: against a
coordinator that answered so every time (several tasks open), the record was never settled (an
abandoned round's content stayed out of the residual until MAX_ACCEPTED newer records pushed
the record out as delivered: lost from error feedback)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import CodecConfig, ErrorFeedback, UpdateCodec
from protocol.messages import CheckInResponse, to_json
from sdk import AsyncClient, Client
from sdk.client import ClientError
from sdk.device_store import AcceptedUpload, DeviceStore

from .test_client import SPEC, _assignment

OLD = np.linspace(-0.5, 0.5, SPEC.size).astype(np.float32)
BACK = np.where(np.arange(SPEC.size) % 3 == 0, 0.25, 0.0).astype(np.float32)


def _holding_a_record(root: Path) -> None:
    """Task 1's residual OLD and the record of its round 3 (content BACK)."""
    ef = ErrorFeedback(SPEC.size)
    ef.residual = OLD.copy()
    store = DeviceStore(root)
    store.save_residual(ef, 1)
    frame, _ = UpdateCodec(SPEC, CodecConfig.dense()).encode(
        BACK, np.random.default_rng(0), weight=0.0
    )
    store.save_accepted(AcceptedUpload(3, frame, SPEC, 1))


def _other_task(outcome: str, asked: list[Any], refused: bool = False) -> httpx.MockTransport:
    """Every check-in is answered with an assignment of task 2 (`refused`: of task 1, with a
    codec this SDK refuses, as a newer coordinator's could be) and `outcome` for the round
    asked about (recorded in `asked`)."""
    other = replace(_assignment(), task_id=2, deadline_unix=4e9, model_path="/v1/tasks/2/model")
    if refused:
        other = replace(_assignment(), deadline_unix=4e9)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/checkin"
        asked.append(json.loads(request.content).get("awaiting_round"))
        answer = to_json(CheckInResponse("train", 0.0, other, round_outcome=outcome))
        if refused:
            answer["assignment"]["codec"]["bits"] = 99
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handler)


def _check_in(kind: str, root: Path, transport: httpx.MockTransport) -> ClientError:
    if kind == "sync":
        with Client("http://coord", str(root), transport=transport, retries=0) as c:
            with pytest.raises(ClientError) as info:
                c.check_in(1)
            return info.value

    async def go() -> ClientError:
        async with AsyncClient("http://coord", str(root), transport=transport, retries=0) as c:
            with pytest.raises(ClientError) as info:
                await c.check_in(1)
            return info.value

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("outcome", ["abandoned", "committed"])
def test_an_outcome_is_settled_even_when_the_assignment_is_for_another_task(
    tmp_path: Path, kind: str, outcome: str
) -> None:
    # Prepare
    _holding_a_record(tmp_path)
    asked: list[Any] = []

    # Execute: a check-in for task 1 answered with task 2's assignment and round 3's outcome
    err = _check_in(kind, tmp_path, _other_task(outcome, asked))

    # Assert: the assignment is still refused, but the outcome settled the record: BACK back
    # into task 1's residual once (abandoned) or forgotten (committed). Before, the record
    # stayed and OLD alone was held
    assert err.reason == "bad_response" and "task 2" in err.detail
    assert asked == [3]
    store = DeviceStore(tmp_path)
    assert store.load_accepted(3) is None
    ef = store.load_residual(SPEC.size, 1)
    assert ef is not None
    expected = OLD + BACK if outcome == "abandoned" else OLD
    np.testing.assert_allclose(ef.residual, expected, atol=1e-6)


def test_such_answers_every_time_no_longer_leave_the_record_unsettled(tmp_path: Path) -> None:
    # Prepare: a coordinator that answers every check-in with another task's assignment and
    # `abandoned` for round 3
    _holding_a_record(tmp_path)
    asked: list[Any] = []
    transport = _other_task("abandoned", asked)

    # Execute: three check-ins, each refused
    with Client("http://coord", str(tmp_path), transport=transport, retries=0) as c:
        for _ in range(3):
            with pytest.raises(ClientError):
                c.check_in(1)

    # Assert: the first settled round 3 (BACK returned once), the later ones asked about nothing
    assert asked == [3, None, None]
    ef = DeviceStore(tmp_path).load_residual(SPEC.size, 1)
    assert ef is not None
    np.testing.assert_allclose(ef.residual, OLD + BACK, atol=1e-6)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_outcome_is_settled_even_when_the_assignment_is_refused(
    tmp_path: Path, kind: str
) -> None:
    # Prepare
    _holding_a_record(tmp_path)
    asked: list[Any] = []

    # Execute: a check-in for task 1 answered with an assignment whose codec this SDK refuses
    err = _check_in(kind, tmp_path, _other_task("abandoned", asked, refused=True))

    # Assert: refused naming the codec, and round 3 settled (BACK returned once). Before, the
    # record stayed for as long as the coordinator sent such assignments
    assert err.reason == "bad_response" and "codec" in err.detail
    assert asked == [3]
    store = DeviceStore(tmp_path)
    assert store.load_accepted(3) is None
    ef = store.load_residual(SPEC.size, 1)
    assert ef is not None
    np.testing.assert_allclose(ef.residual, OLD + BACK, atol=1e-6)
