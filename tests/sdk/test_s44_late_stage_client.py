"""`participate` on a secure task whose advertise-keys upload arrives after that stage timed out
without the device, while the other three run the round's later stages: it returns a
`SecureRoundReport` (`completed` False, `detail` naming the stage that closed without it), never
raises. Before, the coordinator answered 409 `invalid_state` (`WrongStage: stage
advertise-keys is closed`) and `participate` raised that `ClientError`. The stage is closed
either by the coordinator's tick before the upload comes or by the upload itself (the tick
held off): the same report. Stage deadlines run on a stepped clock, so nothing waits for one."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from protocol.secagg import Stage
from sdk import Client
from sdk.client import SecureRoundReport
from tests.coordinator.test_service_support import (
    await_stage,
    drive_stages,
    poll_until,
    served_secure_task,
)
from tests.sdk.test_client_secure import ShiftTrainer

ADMIN = "s44-late-stage-admin"
TIMEOUT_S = 1.0


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[tuple[str, Any, int]]:
    """A coordinator with a secure task of 4 devices, min_reports 3, 1 s stages (on a
    stepped clock): (url, its Coordinator, task id)."""
    with served_secure_task(tmp_path, "s44-late", ADMIN, TIMEOUT_S) as served:
        yield served


@pytest.mark.parametrize("delay_s", [1.1, 1.25])
@pytest.mark.parametrize("closed_by", ["tick", "upload"])
def test_participate_reports_a_stage_that_closed_without_it(
    service: tuple[str, Any, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    closed_by: str,
    delay_s: float,
) -> None:
    # Prepare: the late device's advertise-keys request is held until the three others
    # advertised and `delay_s` passed on the stage clock (and, for "tick", until the
    # coordinator's tick closed the stage; for "upload", the tick closes nothing)
    url, coordinator, task_id = service
    clock = drive_stages(coordinator, task_id)
    registry = coordinator.runtimes[task_id].secure.registry
    if closed_by == "upload":
        monkeypatch.setattr(registry, "close_due", lambda *args, **kwargs: 0)
    held: list[int] = []

    def late_network(request: httpx.Request, nxt: Callable[[httpx.Request], httpx.Response]):  # type: ignore[no-untyped-def]
        if request.method == "POST" and request.url.path.endswith("/stages/advertise-keys"):
            held.append(1)
            await_stage(coordinator, task_id, Stage.ADVERTISE_KEYS, 3)
            rid = coordinator.runtimes[task_id].current.round_id
            clock.advance(delay_s)
            if closed_by == "tick":
                poll_until(lambda: registry.current_stage(rid) == Stage.SHARE_KEYS, "no tick close")
            else:
                assert registry.current_stage(rid) == Stage.ADVERTISE_KEYS
        return nxt(request)

    late = Client(url, str(tmp_path / "late"), mods=(late_network,))
    others = [Client(url, str(tmp_path / f"d{i}")) for i in range(3)]
    clients = [late, *others]
    for c in clients:
        c.register()
    x, y = np.zeros((8, 8), np.float32), np.zeros(8, np.int64)
    out: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            out[i] = clients[i].participate(
                ShiftTrainer(0.01), x, y, task_id=task_id, max_wait_s=60
            )
        except Exception as exc:  # noqa: BLE001 - the test reports what was raised
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    # Execute
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Assert: the late device gets a report, not an exception; the others complete
    assert held == [1]
    report = out[0]
    assert isinstance(report, SecureRoundReport), report
    assert not report.completed and report.stages == [] and not report.receipt.accepted
    assert report.detail.startswith("advertise-keys: ")
    assert "stage advertise-keys is closed" in report.detail
    assert f"closed without device {late.device_id}" in report.detail
    for i in (1, 2, 3):
        r = out[i]
        assert isinstance(r, SecureRoundReport) and r.completed, r
    for c in clients:
        c.close()
