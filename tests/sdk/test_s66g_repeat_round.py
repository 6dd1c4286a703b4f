"""test_s53a's settled repeat, with the coordinator's close of round 1 held back until a round
status is asked: the order a loaded machine can give. The coordinator answers the upload that
completes a round and closes it afterwards (`schedule_close`), so a check-in right after the
upload can come before the commit and learn "pending" (CI at load about 5: `assert 'pending' ==
'committed'`). The test now waits for the commit before it checks in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.coordinator.test_service_support import (
    loopback_url,  # noqa: F401  (the fixture `url`)
    run_with_close_held,
)
from tests.sdk import test_s53a_repeat_round as s53a


def test_the_settled_repeat_checks_in_once_the_round_committed(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Round 1's close waits until a round status is asked. Before the fix the s53a test's
    # check-in came while the close was held and learned "pending"; now it asks while the
    # round is not committed and waits for the commit.
    run_with_close_held(
        monkeypatch,
        lambda: s53a.test_a_second_train_round_of_a_delivered_round_is_refused_before_any_request(
            url, tmp_path, settle_first=True
        ),
    )
