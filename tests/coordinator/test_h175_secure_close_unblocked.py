"""A secure round's unmask does not hold the registry lock: nothing on the event loop waits for it.

`SecureRegistry.finish` held the registry lock across all of `SecureCoordinator.close_round`
(secret reconstruction, unmask, decode, `before_unmask`'s SQLite write), which runs in a
worker thread. Handlers on the event loop take that lock: an upload's body cap is looked up
under it before the signature is checked, and every round status reads the stage counts under
it. So one unsigned POST to a stage endpoint froze the whole coordinator (/healthz included)
until the unmask ended (helper-172: a 401 took 2.6 s and /healthz stalled 2.5 s behind a 3 s
close). `finish` now seals the round under the lock and unmasks outside it.

The slow close is an Event here, not a sleep: the requests must complete while the close is
still held; timeouts are generous (seconds, for requests that take milliseconds).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from coordinator.secure import SecureCoordinator, SecureOutcome
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service._secagg_routes import _ORDER, SecureRegistry
from protocol.messages import CodecParams
from protocol.secagg import Stage, WrongStage
from sdk.client import Client

from .test_h76_registry_scans import _Clock, _Fleet, _registry
from .test_service_support import (
    ADMIN,
    SPEC,
    await_assignment,
    create_task,
    device_client,
    task_config,
)

WAIT_S = 30.0  # generous: every wait below normally ends in milliseconds


class _HeldClose:
    """`SecureCoordinator.close_round` that signals when it starts and waits to be released."""

    def __init__(self, real: Callable[..., SecureOutcome]) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()
        self.calls = 0

    def __call__(self, coord: SecureCoordinator, *args: Any, **kwargs: Any) -> SecureOutcome:
        self.calls += 1
        self.entered.set()
        self.release.wait(WAIT_S)
        try:
            return self.real(coord, *args, **kwargs)
        finally:
            self.done.set()

    def method(self) -> Callable[..., SecureOutcome]:
        """This close as a function to set on the class (it receives the coordinator)."""
        return lambda coord, *args, **kwargs: self(coord, *args, **kwargs)


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@dataclass
class ClosingRound:
    """A secure round of 3 devices whose close (`SecureCoordinator.close_round`) is held once it
    starts: the coordinator's `url`, an `http` client on it (no headers of its own), the
    `held` close, the devices' `clients`, the task and the round."""

    url: str
    http: httpx.Client
    held: _HeldClose
    clients: list[Client]
    task_id: int
    round_id: int


@contextlib.contextmanager
def closing_secure_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ClosingRound]:
    """A `ClosingRound`, yielded once its close has started and is held; on the way out the
    close is released and the devices' threads joined (the round then commits as usual)."""
    held = _HeldClose(SecureCoordinator.close_round)
    monkeypatch.setattr(SecureCoordinator, "close_round", held.method())
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02)
    with ServerThread(cfg) as url, httpx.Client(base_url=url, timeout=WAIT_S) as http:
        tc = task_config(
            rounds=1,
            clients_per_round=3,
            over_selection=1.0,
            min_reports=3,
            selection_timeout_s=60.0,
            deadline_s=60.0,
            downlink=CodecParams(topk=1.0, bits=32),
            secure={"coord_fraction": 0.5, "stage_timeout_s": 60.0},
        )
        tid = create_task(http, tc)
        clients = [device_client(url, str(tmp_path / f"d{i}")) for i in range(3)]
        for c in clients:
            c.register()
        rid: dict[str, int] = {}

        def run(c: Client) -> None:
            a = await_assignment(c, tid)
            rid["r"] = a.round_id
            c.secure_round(a, lambda p: (np.full(SPEC.size, 0.01, np.float32), 1, 0.0))

        devices = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
        for t in devices:
            t.start()
        try:
            assert held.entered.wait(WAIT_S), "the round never started to close"
            yield ClosingRound(url, http, held, clients, tid, rid["r"])
        finally:
            held.release.set()
            for t in devices:
                t.join(WAIT_S)


def test_an_unsigned_request_and_healthz_answer_while_a_secure_round_unmasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a secure round of 3 devices whose close is held once it starts
    with closing_secure_round(tmp_path, monkeypatch) as r:
        # Execute: while the close is held, an unsigned stage upload, /healthz and the
        # round's status (each asked the registry lock before)
        with httpx.Client(base_url=r.url, timeout=10.0) as probe:
            unsigned = probe.post(
                f"/v1/secure/rounds/{r.round_id}/stages/unmask",
                content=b"x",
                headers={"content-type": "application/octet-stream"},
            )
            health = probe.get("/healthz")
            status = probe.get(
                f"/v1/rounds/{r.round_id}", headers={"authorization": f"Bearer {ADMIN}"}
            )
        # Assert: all three answered, and the close had not finished meanwhile
        assert not r.held.done.is_set() and not r.held.release.is_set()
        assert unsigned.status_code == 401, unsigned.text
        assert health.status_code == 200, health.text
        assert status.status_code == 200 and status.json()["state"] == "aggregating"
        # The round still commits as before, once released
        r.held.release.set()
        assert r.held.done.wait(WAIT_S) and r.held.calls == 1
        for _ in range(int(WAIT_S / 0.05)):
            body = r.http.get(
                f"/v1/rounds/{r.round_id}", headers={"authorization": f"Bearer {ADMIN}"}
            ).json()
            if body["state"] == "committed":
                break
            threading.Event().wait(0.05)
        assert body["state"] == "committed", body


def _two_groups() -> tuple[SecureRegistry, _Fleet, list[str], list[str]]:
    """6 devices in 2 groups of 3: group 0 uploaded every stage (its unmask closed), group 1 only
    advertised its keys (it is behind, in share-keys, when the round closes)."""
    reg = _registry(6, _Clock())
    ids = [f"dev-{i:04d}" for i in range(6)]
    fleet = _Fleet(reg, ids)
    groups = reg._rounds[1].groups
    first, second = list(groups[0].sr.device_ids), list(groups[1].sr.device_ids)
    for _ in _ORDER:
        for d in first:
            fleet.upload(ids.index(d), retry=False)
    for d in second:
        fleet.upload(ids.index(d), retry=False)
    assert groups[0].stage is None and groups[1].stage == Stage.SHARE_KEYS
    return reg, fleet, first, second


def test_registry_reads_and_refusals_answer_while_finish_unmasks() -> None:
    # Prepare: the coordinator's close held once it starts
    reg, fleet, first, second = _two_groups()
    behind = second[0]
    directory = reg.download(1, Stage.ADVERTISE_KEYS, behind)
    assert directory is not None
    body = fleet.sessions[behind].share_keys(directory)
    held = _HeldClose(type(reg.coordinator).close_round)
    coord = reg.coordinator
    coord.close_round = lambda *a, **k: held(coord, *a, **k)  # type: ignore[method-assign]
    finisher, fin_out = _in_thread(lambda: reg.finish(1))
    try:
        assert held.entered.wait(WAIT_S)
        # Execute: reads, a late upload of the group left behind, and a second finish

        def during() -> dict[str, Any]:
            out: dict[str, Any] = {
                "has": reg.has_round(1),
                "counts": reg.stage_counts(1),
                "cap": reg.upload_cap(1, Stage.UNMASK),
                "stage": reg.current_stage(1),
                "pending": reg.pending(1, Stage.SHARE_KEYS),
                "reasons": reg.abort_reasons(1),
                "joinable": reg.joinable(1, first[0]),
                "result": reg.result(1),
                "due": reg.close_due(1, 0.0, 0.0),
            }
            try:
                reg.upload(1, Stage.SHARE_KEYS, behind, body)
            except WrongStage as exc:
                out["late"] = str(exc)
            # an idempotent retry of an accepted unmask upload is still a no-op
            out["retry"] = reg.upload(1, Stage.UNMASK, first[0], fleet.bodies[(first[0], 3)])
            return out

        reader, read_out = _in_thread(during)
        reader.join(10.0)
        assert not reader.is_alive(), "a registry call waited for the unmask"
        second_finish, second_out = _in_thread(lambda: reg.finish(1))
        second_finish.join(0.2)  # it waits for the first close, which is still held
        # Assert: everything answered while the close was held
        assert not held.done.is_set()
        got = read_out["value"]
        assert got["has"] and got["counts"][str(Stage.UNMASK)] == 3
        # No stage while sealed (5791d1c; the cut-short group's share-keys before)
        assert got["cap"] > 0 and got["stage"] is None
        assert got["pending"] == (0, 0) and got["reasons"] == []  # cut short: nobody expected
        assert not got["joinable"] and got["result"] is None and got["due"] == 0
        assert "closed" in got["late"] and got["retry"] is False
        assert reg._rounds[1].groups[1].uploaded.get(Stage.SHARE_KEYS, set()) == set()
    finally:
        held.release.set()
    finisher.join(WAIT_S)
    second_finish.join(WAIT_S)
    # A round closes once: the second finish returned the first's outcome
    assert held.calls == 1
    outcome = reg.result(1)
    assert outcome is not None and fin_out["value"] is second_out["value"] is outcome
    assert outcome.committed and outcome.aborted_groups == 1


def test_a_close_that_raises_leaves_the_round_to_finish_again() -> None:
    # Prepare
    reg, _fleet, _first, _second = _two_groups()

    def refuse(dp: dict[str, Any]) -> None:
        raise OSError("disk full")

    calls = []
    real = reg.coordinator.close_round

    def counted(*args: Any, **kwargs: Any) -> SecureOutcome:
        calls.append(1)
        return real(*args, **kwargs)

    reg.coordinator.close_round = counted  # type: ignore[method-assign]
    # Execute: a close whose before_unmask raises (as the store's write may); DP is off, so
    # a pending release is made up for it to be called with
    reg.coordinator.pending_dp = lambda task: {"x": 1}  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        reg.finish(1, refuse)
    # Assert: no outcome, nothing unmasked; a later finish closes it
    assert reg.result(1) is None and len(calls) == 1
    assert reg._rounds[1].groups[0].sr.unmasked is None
    out = reg.finish(1)
    assert out.committed and len(calls) == 2 and reg.result(1) is out
    assert reg.finish(1) is out and len(calls) == 2
