"""A secure round's refused share delivery is fetched again once (5a4cd3f); the masked-input
stage's second attempt must start from the residual from before the first, whatever the first
attempt changed before it was refused (`SecureSession.masked_input` commits nothing before its
share check today; these tests pin the client's side so that the retry does not rely on that).
And a re-fetch that does not come back before the stage's deadline is reported as such, not as
a stage that did not close."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from protocol.secagg import SecAggError, Stage
from sdk import Client
from sdk.client import SecureRoundReport
from tests.sdk import test_h293_secure_corrupt_download as h293
from tests.sdk.test_client_hostile_server import SecureTask
from tests.sdk.test_client_secure import SPEC, ShiftTrainer, _data
from tests.sdk.test_h293_secure_corrupt_download import _committed, _Corrupter

STEP = 0.01  # the victim's update: every parameter moves by STEP

# The fixture: a coordinator with a secure task (3 devices a round, half the coordinates sent)
# and its initial model, the stages timed by a StageClock under a 60 s timeout.
server = h293.server


Mod = Callable[[httpx.Request, Callable[..., Any]], httpx.Response]


def _round(
    task: SecureTask, root: Path, mod: Mod, left_open: Stage | None = None, **victim: Any
) -> tuple[list[Any], np.ndarray]:
    """One secure round of three devices, device 0's requests through `mod` (its Client built
    with `victim` too): each device's report (or what its participate raised), and device 0's
    residual after it (the participant the client holds). `left_open`: a stage device 0 will
    not upload, timed out once device 0's thread ended and the two others uploaded it."""
    url, task_id = task.url, task.task_id
    x, y = _data()
    out: list[Any] = [None] * 3
    residual: list[np.ndarray] = []

    def run(i: int) -> None:
        mods = (mod,) if i == 0 else ()
        kw = victim if i == 0 else {}
        with Client(url, str(root / f"d{i}"), mods=mods, **kw) as client:
            try:
                client.register()
                step = STEP if i == 0 else STEP * (i + 1)
                out[i] = client.participate(ShiftTrainer(step), x, y, task_id=task_id)
            except BaseException as exc:  # returned to the test
                out[i] = exc
            if i == 0:
                part = client._core.secure_participant(SPEC.size, task_id, SPEC)
                residual.append(part.residual.copy())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        if left_open is not None:
            task.expire(left_open, 2, silent=threads[:1])
    finally:
        for t in threads:
            t.join(90)
    assert not any(t.is_alive() for t in threads)
    return out, residual[0]


def test_a_refetched_share_delivery_leaves_the_residual_of_one_masked_input(
    server: SecureTask, tmp_path: Path
) -> None:
    # Prepare: the victim's first share delivery comes with its last byte (in an AES-GCM tag)
    # flipped: it decodes, and is refused only by the protocol's check, inside masked_input
    corrupter = _Corrupter("share-keys", times=1)
    # Execute
    reports, residual = _round(server, tmp_path, corrupter.sync_mod)
    # Assert: the round completed and committed after a second copy; the residual is that of a
    # clean round from a zero residual (its update entered once): exactly STEP on the half of
    # the coordinates not sent (the others hold what the input's quantization left). Had the
    # refused attempt's residual been kept, the coordinates not sent would hold 2 * STEP.
    assert all(isinstance(r, SecureRoundReport) and r.completed for r in reports), reports
    assert corrupter.gets() == 2
    assert _committed(server.url, reports[0].round_id)
    assert np.count_nonzero(residual == np.float32(STEP)) == SPEC.size // 2, residual


def test_a_share_delivery_refused_twice_leaves_the_residual_from_before_the_round(
    server: SecureTask, tmp_path: Path
) -> None:
    # Prepare: every share delivery to the victim is corrupt (in its AES-GCM tag); the
    # masked-input stage it leaves open is timed out once the others uploaded it
    corrupter = _Corrupter("share-keys", times=10**6)
    # Execute
    reports, residual = _round(server, tmp_path, corrupter.sync_mod, Stage.MASKED_INPUT)
    # Assert: the victim raised the protocol's refusal after two copies, sent no masked input,
    # and its residual is the one from before the round (a new device's: zeros), neither
    # attempt's
    assert isinstance(reports[0], SecAggError), reports[0]
    assert corrupter.gets() == 2
    assert not any(m == "POST" and p == "masked-input" for m, p, _ in corrupter.seen)
    np.testing.assert_array_equal(residual, np.zeros(SPEC.size, np.float32))


class _RefetchLost(_Corrupter):
    """The first share delivery corrupt (in its AES-GCM tag), then every further answer of it
    a 503 whose Retry-After (30 s) ends past the round's deadline."""

    def __call__(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/share-keys") and self.times == 0:
            self.seen.append(("GET", "share-keys", 503))
            return httpx.Response(
                503, headers={"retry-after": "30"}, json={"error": "busy"}, request=request
            )
        return super().__call__(request, response)


def test_a_refetch_past_the_deadline_is_reported_as_a_lost_refetch_not_a_stage_left_open(
    server: SecureTask, tmp_path: Path
) -> None:
    # Prepare: the share delivery's first copy is a 200 that does not check; its re-fetch is
    # answered 503 with a Retry-After past the round's deadline (30 s from the assignment);
    # the masked-input stage the victim leaves open is timed out once the others uploaded it
    lost = _RefetchLost("share-keys", times=1)
    # Execute
    reports, residual = _round(server, tmp_path, lost.sync_mod, Stage.MASKED_INPUT)
    # Assert: the round ended for the victim, not completed (the 30 s wait not waited), with a
    # detail saying the re-fetch did not come back; the stage had closed, so not "did not
    # close"; no masked input sent, the residual the one from before the round
    r = reports[0]
    assert isinstance(r, SecureRoundReport), r
    assert not r.completed and r.stages == ["advertise-keys", "share-keys"]
    assert r.detail == (
        "share-keys: a refused copy's re-fetch did not come back before the round deadline "
        "(or max_stage_wait_s)"
    )
    assert lost.seen.count(("GET", "share-keys", 200)) == 1
    assert lost.seen.count(("GET", "share-keys", 503)) == 1
    assert not any(m == "POST" and p == "masked-input" for m, p, _ in lost.seen)
    np.testing.assert_array_equal(residual, np.zeros(SPEC.size, np.float32))
