"""The service machines' (test_h75, test_h83) wait for an answer: longer than any wait of the
coordinator, and a request still unanswered then fails as a hang, naming the request and the
wait (s54, helper E).

With httpx's default 5 s, a request that met a full garbage collection of the test process on
a loaded box raised `ReadTimeout` in the slow exploration runs, which hypothesis could not
replay and reported as `FlakyStrategyDefinition`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from protocol.names import Path as P

from .test_h75_service_machine import ADMIN_AUTH, ANSWER_TIMEOUT_S, Clock, Service


def test_the_machine_waits_longer_than_the_store_may_wait_for_a_lock(tmp_path: Path) -> None:
    # The store waits up to its busy timeout for another connection's write lock, per
    # statement: the machine's client must not give up first.
    svc = Service(tmp_path / "plume.db", Clock(), None)
    try:
        busy_ms = svc.store._db.execute("PRAGMA busy_timeout").fetchone()[0]
        assert busy_ms == 5000
        timeout = svc.http.timeout
        for phase in (timeout.connect, timeout.read, timeout.write, timeout.pool):
            assert phase == ANSWER_TIMEOUT_S
        assert ANSWER_TIMEOUT_S * 1000 >= 10 * busy_ms
    finally:
        svc.stop(crash=True)


class _QuickService(Service):
    answer_timeout_s = 0.5


def test_a_request_left_unanswered_fails_naming_itself_and_the_wait(tmp_path: Path) -> None:
    # The pause handler blocks (on the event loop, as a hung store call would) until released:
    # the step fails with an AssertionError naming the request, not an httpx.ReadTimeout.
    svc = _QuickService(tmp_path / "plume.db", Clock(), None)
    release = threading.Event()
    set_paused = svc.coord.set_paused

    def hung(task_id: int, paused: bool) -> Any:
        release.wait(30)
        return set_paused(task_id, paused)  # no task 1: a 404 once released

    svc.coord.set_paused = hung  # type: ignore[method-assign]
    try:
        request = svc.http.build_request(
            "POST", P.ADMIN_PAUSE.format(task_id=1), headers=ADMIN_AUTH
        )
        with pytest.raises(AssertionError) as caught:
            svc.exchange(request)
        message = str(caught.value)
        assert message.startswith("POST /v1/admin/tasks/1/pause: no answer after "), message
        assert message.endswith(" s (ReadTimeout; the limit is 0.5 s): the coordinator hung"), (
            message
        )
    finally:
        release.set()
        svc.stop(crash=True)
