"""test_s53a's settled repeat, with the coordinator's close of round 1 held back until a round
status is asked: the order a loaded machine can give. The coordinator answers the upload that
completes a round and closes it afterwards (`schedule_close`), so a check-in right after the
upload can come before the commit and learn "pending" (CI at load about 5: `assert 'pending' ==
'committed'`). The test now waits for the commit before it checks in."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.names import RoundState
from tests.sdk import test_s53a_repeat_round as s53a
from tests.sdk.test_s66b_fetch_current_before_commit import _HeldClose, _served


def test_the_settled_repeat_checks_in_once_the_round_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: round 1's close waits until a round status is asked
    with _served(tmp_path) as (url, coordinator):
        held = _HeldClose(coordinator, monkeypatch, on_status=True)
        try:
            # Execute: the s53a test itself; before the fix its check-in came while the close
            # was held and learned "pending"
            s53a.test_a_second_train_round_of_a_delivered_round_is_refused_before_any_request(
                url, tmp_path, settle_first=True
            )
        finally:
            held.release()
    # Assert: it asked about the round while it was not committed, and waited for the commit
    assert held.states[0] != RoundState.COMMITTED, held.states
    assert held.states[-1] == RoundState.COMMITTED, held.states
