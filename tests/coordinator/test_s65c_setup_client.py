"""`participate` on a secure round whose setup the coordinator refuses because the round is
over for the device: it returns a `SecureRoundReport` (`completed` False, `detail` "setup: "
and the coordinator's detail, nothing trained), never raises (s65c).

Since s65c the coordinator refuses the setup of a device whose advertise-keys stage closed
without it (403 `not_selected`) or whose group aborted (410 `round_closed`), where it served
the plan before; and a round closing when the setup comes was already 409 `round_closed`. The
SDK raised each of these as a `ClientError`, which ends the documented device loop
(docs/devices.md: anything but its listed errors propagates), while the same answers to a
stage upload end the round with a report (`tests/sdk/test_s44_late_stage_client.py`). Stage
deadlines run on a stepped clock, so nothing waits for one.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from protocol.secagg import Stage
from sdk import Client, TrainResult
from sdk.client import SecureRoundReport

from .test_service_support import (
    await_stage,
    drive_stages,
    poll_until,
    served_secure_task,
)

ADMIN = "s65c-setup-admin"
TIMEOUT_S = 1.0


class _Counting:
    """A trainer that moves every parameter by 0.01 and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

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
        self.calls += 1
        return TrainResult(params + np.float32(0.01), len(x), 0.5)


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[tuple[str, Any, int]]:
    """A coordinator with a secure task of 4 devices in one group, min_reports 3, 1 s stages
    (on a stepped clock): (url, its Coordinator, task id)."""
    with served_secure_task(tmp_path, "s65c-setup", ADMIN, TIMEOUT_S) as served:
        yield served


# (how many of the three others advertise, what closes the stage) -> the setup's answer
CASES = {
    "late-tick": (3, "tick", 403, "setup: StageClosedWithout: stage advertise-keys is closed"),
    "late-setup": (3, "setup", 403, "setup: StageClosedWithout: stage advertise-keys is closed"),
    "aborted-setup": (1, "setup", 410, "setup: RoundAborted: 1 nodes advertised keys, need 2"),
    "closing-tick": (1, "tick", 409, "setup: secure round {rid} is (closing|abandoned)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_setup_ends_the_round_with_a_report(
    service: tuple[str, Any, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    # Prepare: the late device's setup request is held until the others advertised (or went
    # silent) and the advertise-keys deadline passed on the stage clock; "tick": the
    # coordinator's tick closed the stage (and, with one key of four, began the round's
    # close); "setup": the tick closes nothing, the setup itself closes the stage
    keys, closed_by, status, detail = CASES[case]
    url, coordinator, task_id = service
    clock = drive_stages(coordinator, task_id)
    registry = coordinator.runtimes[task_id].secure.registry
    if closed_by == "setup":
        monkeypatch.setattr(registry, "close_due", lambda *args, **kwargs: 0)
    held: list[int] = []
    answers: list[int] = []

    def late_network(request: httpx.Request, nxt: Callable[[httpx.Request], httpx.Response]):  # type: ignore[no-untyped-def]
        if request.url.path.endswith("/setup"):
            held.append(1)
            await_stage(coordinator, task_id, Stage.ADVERTISE_KEYS, keys)
            rid = coordinator.runtimes[task_id].current.round_id
            poll_until(lambda: len(silent_setups) == 3 - keys, "the silent devices' setups")
            clock.advance(TIMEOUT_S + 0.1)
            if closed_by == "tick":
                cur = coordinator.runtimes[task_id].current
                if keys == 3:
                    poll_until(lambda: registry.current_stage(rid) == Stage.SHARE_KEYS, "no close")
                else:  # the group aborted: the round closes (its registry entry then goes)
                    poll_until(lambda: cur.closing, "no round close")
            else:
                assert registry.current_stage(rid) == Stage.ADVERTISE_KEYS
            response = nxt(request)
            answers.append(response.status_code)
            return response
        return nxt(request)

    silent_setups: list[int] = []

    def silent_network(request: httpx.Request, nxt: Callable[[httpx.Request], httpx.Response]):  # type: ignore[no-untyped-def]
        response = nxt(request)
        if request.url.path.endswith("/setup"):
            silent_setups.append(1)
        return response

    late = Client(url, str(tmp_path / "late"), mods=(late_network,))
    others = [
        Client(url, str(tmp_path / f"d{i}"), mods=(silent_network,) if i >= keys else ())
        for i in range(3)
    ]
    clients = [late, *others]
    for c in clients:
        c.register()
    x, y = np.zeros((8, 8), np.float32), np.zeros(8, np.int64)
    trainers = [_Counting() for _ in clients]
    out: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            if i == 0 or i <= keys:
                out[i] = clients[i].participate(trainers[i], x, y, task_id=task_id, max_wait_s=60)
            else:  # assigned, then silent after its setup (it never advertises)
                a = clients[i].check_in(task_id)
                while a.assignment is None:
                    time.sleep(0.05)
                    a = clients[i].check_in(task_id)
                out[i] = clients[i].secure_round(
                    a.assignment, lambda p: (p * 0, 1, 0.0), drop_at=Stage.ADVERTISE_KEYS
                )
        except Exception as exc:  # noqa: BLE001 - the test reports what was raised
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    # Execute
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Assert: the late device's setup was refused, and it got a report, not an exception:
    # nothing trained (loss NaN, no examples), no stage sent
    assert held == [1] and answers == [status], (held, answers, out.get(0))
    report = out[0]
    assert isinstance(report, SecureRoundReport), report
    rid = report.round_id
    assert re.match(detail.format(rid=rid), report.detail), report.detail
    assert not report.completed and report.stages == [] and not report.receipt.accepted
    assert report.num_examples == 0 and math.isnan(report.loss)
    assert trainers[0].calls == 0
    if keys == 3:  # the others ran the round without it
        for i in (1, 2, 3):
            r = out[i]
            assert isinstance(r, SecureRoundReport) and r.completed, r
    for c in clients:
        c.close()
