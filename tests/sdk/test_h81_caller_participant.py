"""A caller's own `SecureParticipant` (`secure_round(..., participant=p)`, as a simulator holds
one) is settled as the app directory's is, when the round's end settles it at once.

The masked input leaves `p` holding the residual minus what the input stands for, and that in
`p.unsettled`. When the coordinator surely did not take the input (a 410 `round_closed` at its
upload: the round aborted; a 4xx refusal; no connection opened) the round has settled it:
`p.residual` is again the one from before the round, nothing unsettled, as the app directory's
residual is then. Before, `p` kept the input's content out of its residual and unsettled (only a
410 after the upload returned it): the first three tests failed. An input that may have been
taken stays unsettled for the caller to settle by the round's outcome (controls), and a
participant still holding one is refused before the next round's first request: that round's
input would overwrite the record (the last two tests failed)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from protocol.secagg import Stage
from sdk import Client
from sdk.client import ClientError, SecureRoundReport
from sdk.secure import SecureParticipant

from .test_client import SPEC
from .test_h61_inflight import SecureFake, secure_task

ROUND = 101
MASKED = f"/stages/{Stage.MASKED_INPUT}"
BEFORE = np.linspace(-0.01, 0.01, SPEC.size, dtype=np.float32)  # the caller's residual


class AtMaskedUpload:
    """`SecureFake`, except that the masked-input upload gets `answer` (a response, or an
    exception to raise); `posts` counts those uploads."""

    def __init__(self, answer: httpx.Response | Exception | None) -> None:
        self.fake = SecureFake()
        self.answer = answer
        self.posts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith(MASKED):
            self.posts += 1
            if isinstance(self.answer, Exception):
                raise self.answer
            if self.answer is not None:
                return self.answer
        return self.fake(request)


def _participant() -> SecureParticipant:
    p = SecureParticipant(SPEC.size)
    p.residual = BEFORE.copy()
    return p


def _round(
    root: Path, coord: AtMaskedUpload, p: SecureParticipant, retries: int = 0
) -> SecureRoundReport:
    def update(params: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], int, float]:
        return np.full(SPEC.size, 0.05, np.float32), 8, 0.25

    transport = httpx.MockTransport(coord)
    with Client("http://coord", str(root), transport=transport, retries=retries, backoff_s=0) as c:
        return c.secure_round(secure_task(1, ROUND), update, participant=p)


def test_a_410_at_the_masked_upload_gives_the_caller_its_residual_back(tmp_path: Path) -> None:
    # Prepare: the round aborted as the input arrived
    closed = httpx.Response(410, json={"reason": "round_closed", "detail": "aborted"})
    coord, p = AtMaskedUpload(closed), _participant()
    # Execute
    report = _round(tmp_path, coord, p)
    # Assert: the round ended for the device, and the participant is as before the round
    assert coord.posts == 1 and not report.completed and "aborted" in report.detail
    assert Stage.MASKED_INPUT not in report.stages
    assert p.unsettled is None
    np.testing.assert_array_equal(p.residual, BEFORE)


def test_a_4xx_refusal_of_the_masked_input_gives_the_caller_its_residual_back(
    tmp_path: Path,
) -> None:
    # Prepare
    refused = httpx.Response(400, json={"reason": "bad_request", "detail": "refused"})
    coord, p = AtMaskedUpload(refused), _participant()
    # Execute: the refusal is raised, as before
    with pytest.raises(ClientError) as info:
        _round(tmp_path, coord, p)
    # Assert
    assert info.value.status == 400
    assert p.unsettled is None
    np.testing.assert_array_equal(p.residual, BEFORE)


def test_a_masked_input_never_sent_gives_the_caller_its_residual_back(tmp_path: Path) -> None:
    # Prepare: no connection can be opened, on either attempt
    coord, p = AtMaskedUpload(httpx.ConnectError("offline")), _participant()
    # Execute
    with pytest.raises(httpx.ConnectError):
        _round(tmp_path, coord, p, retries=1)
    # Assert
    assert coord.posts == 2
    assert p.unsettled is None
    np.testing.assert_array_equal(p.residual, BEFORE)


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(503, json={"reason": "busy", "detail": "x"}), httpx.ReadTimeout("lost")],
    ids=["5xx", "read-timeout"],
)
def test_an_input_that_may_have_been_taken_stays_unsettled(
    tmp_path: Path, answer: httpx.Response | Exception
) -> None:
    # Prepare: the coordinator may hold the input; its answer is lost
    coord, p = AtMaskedUpload(answer), _participant()
    # Execute
    try:
        report: SecureRoundReport | None = _round(tmp_path, coord, p)
    except (ClientError, httpx.TransportError):
        report = None
    # Assert: the caller settles it by the round's outcome; returning it is exact
    assert report is None or not report.completed
    assert p.unsettled is not None
    sent = p.sent_dense()
    assert sent is not None and np.any(sent)
    assert p.return_sent()
    np.testing.assert_allclose(p.residual, BEFORE + 0.05, atol=1e-6)


def test_a_completed_round_leaves_the_input_unsettled_for_the_outcome(tmp_path: Path) -> None:
    # Control: a round that completed is settled by its outcome, not by the flow
    coord, p = AtMaskedUpload(None), _participant()
    report = _round(tmp_path, coord, p)
    assert report.completed and p.unsettled is not None


def test_a_participant_with_an_unsettled_input_is_refused_before_any_request(
    tmp_path: Path,
) -> None:
    # Prepare: the caller has not settled an earlier round's masked input; a new one would
    # overwrite `unsettled`, and that input could no longer go back if its round ends without it
    earlier = (np.arange(0, SPEC.size, 2, dtype=np.int64), np.full(SPEC.size // 2, 0.5, np.float32))
    coord, p = AtMaskedUpload(None), _participant()
    p.unsettled = earlier
    # Execute
    with pytest.raises(ValueError, match="unsettled"):
        _round(tmp_path, coord, p)
    # Assert: nothing sent, the participant as it was
    assert coord.fake.seen == []
    assert p.unsettled is earlier
    np.testing.assert_array_equal(p.residual, BEFORE)


def test_a_session_refuses_to_overwrite_an_unsettled_input() -> None:
    # The same guard one level down, for callers that drive `SecureSession` themselves
    from coordinator.secure import SecureConfig, make_plan
    from protocol.secagg import model_digest, round_digest

    plan = make_plan(SecureConfig(), 1, 3, SPEC.size, np.arange(SPEC.size, dtype=np.int64))
    params = np.zeros(SPEC.size, np.float32)
    p = _participant()
    session = p.join(plan.to_bytes(), round_digest(model_digest(params), plan), params, 0)
    p.unsettled = earlier = (np.zeros(1, np.int64), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="unsettled"):
        session.masked_input(b"", np.zeros(SPEC.size, np.float32), 1, np.random.default_rng(0))
    assert p.unsettled is earlier
    np.testing.assert_array_equal(p.residual, BEFORE)
