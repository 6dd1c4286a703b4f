"""A SecAgg+ device killed right after the coordinator took its masked input, before anything
else: the app directory must already hold the residual the input left and a record of what the
input stood for. Before, both were saved only after the upload's answer, so the directory still
held the residual from before the round, which the input had carried: a round that then
committed got that content again from a later round (counted twice), and one abandoned got
nothing back (no record). Against a real coordinator on loopback; the kill is an exception
raised by a client mod once the masked-input upload's 200 came back, after which device 0's app
directory takes no more writes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from compression import ErrorFeedback
from protocol.secagg import Stage
from sdk import Client, device_store
from sdk.client import SecureRoundReport
from sdk.device_store import DeviceStore
from tests.coordinator.test_service_support import await_assignment

from .test_client_abandoned_round import (
    SECURE_SPEC,
    _await_state,
    _driven_secure_task,
    _expire_stage,
    _residual,
    _sent,
)
from .test_client_abandoned_round import url as url  # noqa: F401  (the loopback fixture)

OLD = 0.3  # device 0's residual before the round: the masked input carries it
# Five devices: a group of three cannot recover one device's missing unmask shares.
COHORT = 5


class _Killed(Exception):
    """Stands in for the process dying."""


def _killed_after_masked_input(
    url: str, root: Path, task_id: int, others_drop: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, npt.NDArray[np.float32]]:
    """Run one secure round of COHORT devices in which device 0 (app directory `root`, holding
    residual OLD) dies right after its masked input is accepted; the others finish the round
    (or, with `others_drop`, go silent before unmask). Returns (round id, the residual the
    input left, read from device 0's participant when the input's 200 came back)."""
    ef = ErrorFeedback(SECURE_SPEC.size)
    ef.residual = np.full(SECURE_SPEC.size, OLD, np.float32)
    DeviceStore(root).save_residual(ef, task_id)
    seen: dict[str, Any] = {}
    victim: list[Client] = []
    dead = threading.Event()

    def frozen(real: Callable[..., Any]) -> Callable[..., Any]:
        # Once device 0 is dead, its app directory takes no write (its `finally` would write).
        def write(path: Any, *args: Any, **kwargs: Any) -> Any:
            if dead.is_set() and root in Path(path).parents:
                raise _Killed
            return real(path, *args, **kwargs)

        return write

    for name in ("_write", "_unlink"):
        monkeypatch.setattr(device_store, name, frozen(getattr(device_store, name)))
    monkeypatch.setattr(device_store.os, "replace", frozen(device_store.os.replace))

    def kill(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        response = nxt(request)
        if request.method == "POST" and request.url.path.endswith("/stages/masked-input"):
            response.read()
            if response.status_code == 200:
                part = victim[0]._core._participants[(task_id, SECURE_SPEC.size)]
                seen["left"] = part.residual.copy()
                dead.set()
                raise _Killed
        return response

    clients = [Client(url, str(root), mods=(kill,))]
    victim.append(clients[0])
    clients += [Client(url, str(root.parent / f"o{i}")) for i in range(COHORT - 1)]
    for c in clients:
        c.register()
    delta = np.full(SECURE_SPEC.size, 0.2, np.float32)
    reports: list[SecureRoundReport | BaseException | None] = [None] * COHORT

    def run(i: int) -> None:
        a = await_assignment(clients[i], task_id)
        drop = Stage.UNMASK if others_drop and i > 0 else None
        try:
            reports[i] = clients[i].secure_round(a, lambda p: (delta, 8, 0.0), drop_at=drop)
        except BaseException as exc:  # device 0's death
            reports[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(COHORT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in clients:
        c.close()
    monkeypatch.undo()
    assert isinstance(reports[0], _Killed), reports[0]
    r1 = reports[1]
    assert isinstance(r1, SecureRoundReport) and r1.completed is (not others_drop)
    return r1.round_id, seen["left"]


def test_a_device_killed_after_its_masked_input_does_not_send_it_again_once_committed(
    url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: device 0 dies once its masked input is taken; the round commits with it, once
    # its unmask stage (device 0 sends nothing to it) times out with the others' answers.
    # Stages time out on the test's clock: every device uploads the three before unmask, which
    # close as soon as all did, however slow the machine
    task_id, clock = _driven_secure_task(url, cohort=COHORT)
    root = tmp_path / "d0"
    round_id, left = _killed_after_masked_input(
        url, root, task_id, others_drop=False, monkeypatch=monkeypatch
    )
    assert not np.allclose(left, 0.2 + OLD)  # the input carried a part of u, OLD included
    _expire_stage(url, task_id, clock, Stage.UNMASK, COHORT - 1)
    _await_state(url, round_id, "committed")

    # Execute: the app starts again and checks in
    again = Client(url, str(root))
    answer = again.check_in(task_id)

    # Assert: the round holds the input; the residual is the one the input left (before, the
    # one from before the round, whose content at S_r the next round would send again)
    np.testing.assert_array_equal(_residual(root, SECURE_SPEC.size, task_id), left)
    assert answer.round_outcome == "committed"
    assert DeviceStore(root).load_accepted() is None
    participant = again._core.secure_participant(SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(participant.residual, left)
    again.close()


def test_a_device_killed_after_its_masked_input_gets_it_back_once_if_abandoned(
    url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: device 0 dies once its masked input is taken; the others go silent before
    # unmask, so the round is abandoned when that stage times out (on the test's clock)
    task_id, clock = _driven_secure_task(url, cohort=COHORT)
    root = tmp_path / "d0"
    round_id, left = _killed_after_masked_input(
        url, root, task_id, others_drop=True, monkeypatch=monkeypatch
    )
    sent = _sent(root)  # the record of what the input stood for (before: none was saved)
    _expire_stage(url, task_id, clock, Stage.UNMASK, 0)
    _await_state(url, round_id, "abandoned")

    # Execute: the app starts again and checks in, twice
    again = Client(url, str(root))
    first = again.check_in(task_id)
    second = again.check_in(task_id)

    # Assert: what the input stood for is back in the residual once: u = delta + OLD (before,
    # there was no record to settle, and the residual held OLD only)
    assert first.round_outcome == "abandoned" and second.round_outcome is None
    settled = _residual(root, SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(settled, (left + sent).astype(np.float32))
    np.testing.assert_allclose(settled, np.full(SECURE_SPEC.size, 0.2 + OLD), atol=1e-6)
    participant = again._core.secure_participant(SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(participant.residual, settled)
    again.close()
