"""`timeout` is checked at construction, as `retries` and `backoff_s` are, and one backoff wait
is at most `MAX_BACKOFF_S` (helper-174's review). Before: -1 and NaN failed at the first
request with httpx's bare "Timeout value out of range" / "Invalid value NaN", "5" with a
`TypeError` from a comparison, 0 made every connect fail and was reported as an outage
(`CoordinatorUnreachable`); `retries=12` waited 435 s before its last attempt, and a huge
`retries` overflowed the float (`OverflowError`) mid-request."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdk import AsyncClient, Client, ClientError
from sdk.client import MAX_BACKOFF_S

MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


def _make(root: Path, asynchronous: bool, **kw: Any) -> None:
    """Make and close a client of `root` with `kw`."""
    if not asynchronous:
        Client("http://127.0.0.1:9", str(root), **kw).close()
        return

    async def run() -> None:
        await AsyncClient("http://127.0.0.1:9", str(root), **kw).aclose()

    asyncio.run(run())


@MODES
@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (0, ValueError), (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
        (-0.0, ValueError), ("5", TypeError), (None, TypeError), (True, TypeError),
    ],
    ids=repr,
)  # fmt: skip
def test_a_timeout_that_is_no_positive_number_is_refused_at_construction(
    tmp_path: Path, asynchronous: bool, timeout: Any, error: type[Exception]
) -> None:
    # Execute
    with pytest.raises(error, match="timeout must be"):
        _make(tmp_path / "d", asynchronous, timeout=timeout)
    # Assert: refused before the app directory is made
    assert not (tmp_path / "d").exists()


@MODES
@pytest.mark.parametrize("timeout", [0.5, 30, 1e9], ids=repr)
def test_a_positive_timeout_is_taken(tmp_path: Path, asynchronous: bool, timeout: float) -> None:
    _make(tmp_path / "d", asynchronous, timeout=timeout)


def test_one_backoff_wait_is_at_most_the_cap(tmp_path: Path) -> None:
    # Prepare
    with Client("http://127.0.0.1:9", str(tmp_path), retries=12) as client:
        core = client._core
        # Execute
        waits = [core.delay(attempt, None) for attempt in range(12)]
        huge = core.delay(10**6, None)
    # Assert: doubling from 0.2 s until the cap, which holds for any attempt; each wait is
    # half of it to all of it (equal jitter)
    assert MAX_BACKOFF_S == 60.0
    for attempt, wait in enumerate(waits):
        full = min(0.2 * 2**attempt, MAX_BACKOFF_S)
        assert full / 2 <= wait <= full
    assert max(waits) <= MAX_BACKOFF_S and sum(waits) < 12 * MAX_BACKOFF_S
    assert MAX_BACKOFF_S / 2 <= huge <= MAX_BACKOFF_S


def test_a_retry_after_still_wins_over_the_backoff(tmp_path: Path) -> None:
    # Prepare
    response = httpx.Response(503, headers={"retry-after": "7"})
    with Client("http://127.0.0.1:9", str(tmp_path), retries=12) as client:
        # Execute
        wait = client._core.delay(11, response)
    # Assert: the Retry-After's 7 s, up to 20 % more (RETRY_AFTER_SPREAD), never less
    assert 7.0 <= wait <= 7.0 * 1.2


def test_retries_sleep_the_capped_waits(tmp_path: Path) -> None:
    # Prepare: every attempt refused with a 503 and no Retry-After; the sleeps are recorded
    slept: list[float] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"reason": "busy", "detail": "try later"})

    with Client(
        "http://127.0.0.1:9", str(tmp_path), transport=httpx.MockTransport(refuse),
        retries=12, sleep=slept.append,
    ) as client:  # fmt: skip
        # Execute
        with pytest.raises(ClientError, match=r"^503 busy: try later \(after 13 attempts\)$"):
            client.check_in(1)
    # Assert
    assert len(slept) == 12 and MAX_BACKOFF_S / 2 <= max(slept) <= MAX_BACKOFF_S
