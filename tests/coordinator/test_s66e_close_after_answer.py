"""tests/coordinator claims that read a round right after its devices' last answer, with the
coordinator's close of that round held back: the order a loaded machine can give.

The coordinator answers the request that ends a round's collection first and closes the round
afterwards (`schedule_close`; the aggregation and the publish run off the event loop in
`close_blocking`). test_s63a_service_cut_group read its secure round's state as soon as the
devices' threads had ended, which they do on the close's first answer (409 "closing"), and
expected "committed"; with every close delayed 0.5 s (an audit of tests/coordinator, s66e) it
read "aggregating". Here the close waits until the round's status has been asked once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from coordinator.service.rounds import Coordinator
from protocol.names import RoundState

from . import test_s63a_service_cut_group as s63a

HOLD_S = 60.0  # bounds a test that never asks, instead of hanging the server's shutdown


class _HeldClose:
    """Every coordinator's round close (`close_blocking`) waits until a round's status has been
    asked (`round_status`, GET /v1/rounds/{id}) and answered while the close was held;
    `states` are the states the answers gave."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.asked = threading.Event()
        self.states: list[str] = []
        close_blocking = Coordinator.close_blocking
        round_status = Coordinator.round_status

        def held_close(coordinator: Coordinator, rt: Any, cur: Any) -> Any:
            self.asked.wait(HOLD_S)
            return close_blocking(coordinator, rt, cur)

        def status(coordinator: Coordinator, *args: Any, **kwargs: Any) -> Any:
            answer = round_status(coordinator, *args, **kwargs)
            self.states.append(str(answer.state))
            self.asked.set()
            return answer

        monkeypatch.setattr(Coordinator, "close_blocking", held_close)
        monkeypatch.setattr(Coordinator, "round_status", status)


def test_the_s63a_cut_group_claim_reads_the_round_once_it_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the round's close waits until its status is asked
    held = _HeldClose(monkeypatch)
    # Execute: the s63a test itself; before the fix it read the round while its close was
    # held, and saw "aggregating"
    s63a.test_a_cut_short_group_s_poll_ends_with_round_closed(tmp_path)
    # Assert: it asked while the round was not committed, and waited for the commit
    assert held.states[0] == RoundState.AGGREGATING, held.states
    assert held.states[-1] == RoundState.COMMITTED, held.states
