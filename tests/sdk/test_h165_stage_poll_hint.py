"""The SDK polls a secure stage that is still open (425) after the answer's `retry_after_s`
(a JSON number, sub-second allowed) when the body has one, else after its `Retry-After`.

The coordinator's `Retry-After` on a 425 was fractional ("0.25"), which RFC 9110 does not
allow (delay-seconds are whole). It now sends whole seconds, rounded up ("1"), and puts the
sub-second poll interval in the body as `retry_after_s`. Before, the SDK read only the header,
so it would have polled every 1 s instead of every 0.25 s: the first test failed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import sdk.client as sdk_client
from sdk import AsyncClient, Client
from sdk.client import _MIN_POLL_S

from .test_client import SPEC
from .test_h61_inflight import secure_task
from .test_h68_retry_after import OpenOnce


class OpenOnceWithHint(OpenOnce):
    """`OpenOnce` (each stage's first download is 425 with `Retry-After: value`) whose 425
    body also carries `retry_after_s: hint` (left out when `hint` is the string "absent")."""

    def __init__(self, value: str | None, hint: Any) -> None:
        super().__init__(value)
        self.hint = hint

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = super().__call__(request)
        if answer.status_code != 425:
            return answer
        body: dict[str, Any] = {"reason": "invalid_state", "detail": "stage is still open"}
        if not (isinstance(self.hint, str) and self.hint == "absent"):
            body["retry_after_s"] = self.hint
        # allow_nan: a server that sends NaN or Infinity (Python's json reads both)
        content = json.dumps(body, allow_nan=True).encode()
        headers = {**answer.headers, "content-type": "application/json"}
        return httpx.Response(425, content=content, headers=headers)


def _update(p: Any) -> tuple[Any, int, float]:
    return np.full(SPEC.size, 0.05, np.float32), 8, 0.0


def _sleeps(tmp_path: Path, handler: OpenOnce) -> list[float]:
    sleeps: list[float] = []
    with Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(handler), sleep=sleeps.append
    ) as client:
        report = client.secure_round(secure_task(1, 101), _update)
    assert report.completed, report.detail
    assert len(sleeps) == 3, sleeps  # one pause per stage that was open at its first poll
    return sleeps


def test_the_body_hint_sets_the_pause_under_a_whole_second_header(tmp_path: Path) -> None:
    # The coordinator's answer with --poll 0.25: "Retry-After: 1", retry_after_s 0.25
    assert _sleeps(tmp_path, OpenOnceWithHint("1", 0.25)) == [0.25] * 3


@pytest.mark.parametrize(
    "hint",
    ["absent", None, "0.25", True, -1, -0.5, float("nan"), float("inf"), 10**400, [0.25]],
)
def test_a_missing_or_unusable_hint_leaves_the_header(tmp_path: Path, hint: Any) -> None:
    # An older coordinator (no hint), or a hint that is not a finite number >= 0: the
    # header's whole seconds, as before
    assert _sleeps(tmp_path, OpenOnceWithHint("2", hint)) == [2.0] * 3


@pytest.mark.parametrize(("hint", "want"), [(0, _MIN_POLL_S), (0.01, _MIN_POLL_S), (1e9, 30.0)])
def test_the_hint_keeps_the_floor_and_the_cap(tmp_path: Path, hint: float, want: float) -> None:
    # As a Retry-After: at least _MIN_POLL_S (no spinning), at most 30 s
    assert _sleeps(tmp_path, OpenOnceWithHint("1", hint)) == [want] * 3


def test_the_async_client_reads_the_body_hint_too(tmp_path: Path, monkeypatch: Any) -> None:
    # AsyncClient drives the same round generator through its own pause (`_apause`)
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(sdk_client, "_apause", pause)

    async def run() -> Any:
        transport = httpx.MockTransport(OpenOnceWithHint("1", 0.25))
        async with AsyncClient("http://coord", str(tmp_path), transport=transport) as client:
            return await client.secure_round(secure_task(1, 101), _update)

    report = asyncio.run(run())
    assert report.completed, report.detail
    assert pauses == [0.25] * 3, pauses
