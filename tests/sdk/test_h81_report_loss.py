"""What a `SecureRoundReport`'s `loss` says (an item of the left-alone list): the
training's loss whenever it ran, also when the round then ended early, and NaN, with
`num_examples` 0, when nothing was trained (tests/sdk/test_h68_secure_setup_deadline.py).
`loss` stays a float: mobile_sim and apps average it, and None would break them; the report's
docstring says NaN means no training, and `completed` whether the update took part."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt

from sdk import Client

from .test_client import SPEC
from .test_h61_inflight import secure_task
from .test_h81_caller_participant import ROUND, AtMaskedUpload


def _update(params: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], int, float]:
    return np.full(SPEC.size, 0.05, np.float32), 8, 0.25


def test_a_round_that_ends_after_training_reports_the_training_loss(tmp_path: Path) -> None:
    # Prepare: the round aborts as the masked input arrives
    closed = httpx.Response(410, json={"reason": "round_closed", "detail": "aborted"})
    transport = httpx.MockTransport(AtMaskedUpload(closed))
    # Execute
    with Client("http://coord", str(tmp_path), transport=transport, retries=0) as c:
        report = c.secure_round(secure_task(1, ROUND), _update)
    # Assert: trained, not part of the round
    assert not report.completed and "aborted" in report.detail
    assert report.loss == 0.25 and report.num_examples == 8
    assert not report.receipt.accepted


def test_a_completed_round_reports_the_training_loss(tmp_path: Path) -> None:
    transport = httpx.MockTransport(AtMaskedUpload(None))
    with Client("http://coord", str(tmp_path), transport=transport, retries=0) as c:
        report = c.secure_round(secure_task(1, ROUND), _update)
    assert report.completed and report.loss == 0.25 and math.isfinite(report.loss)
