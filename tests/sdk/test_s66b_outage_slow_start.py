"""test_s55v_app_dir_words' outage claim on a device whose call is slow to reach its first
attempt, as a loaded machine's can be: `participate` reads the app directory for an upload left
pending before it checks in, and here that read takes 0.05 s. The test gave the call 0.01 s
(`max_wait_s`), which then ran out before any attempt: nothing was sent, so no outage was seen
and the call returned None ("DID NOT RAISE CoordinatorUnreachable", 32 of 300 runs under 3 CPU
hogs and an fsync loop). It now waits 1 s, still less than the retries' backoff."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import sdk.device_store
from tests.sdk import test_s55v_app_dir_words as app_dir_words

# Longer than the 0.01 s the test waited before.
SLOW_S = 0.05


def test_the_outage_claim_holds_when_the_first_attempt_comes_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the pending-upload read before the first check-in takes SLOW_S
    load_pending = sdk.device_store.DeviceStore.load_pending
    slowed = []

    def slow_load_pending(self: Any) -> Any:
        time.sleep(SLOW_S)
        slowed.append(self)
        return load_pending(self)

    monkeypatch.setattr(sdk.device_store.DeviceStore, "load_pending", slow_load_pending)

    # Execute: the s55v test itself
    app_dir_words.test_an_outage_is_raised_however_short_the_wait(tmp_path)

    # Assert: its call was the slow one
    assert slowed
