"""`Client` and `AsyncClient` refuse retry settings they cannot honour when built, with a
`ValueError` naming the setting. Before, `retries=-1` made every request fail with
`AssertionError('unreachable')`, `retries=1.5` with a `TypeError`, and a NaN or negative
`backoff_s` raised from `time.sleep` at the first retry, in the middle of a request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from sdk import AsyncClient, Client, ClientError


def _busy(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retries": True}, "retries"),
        ({"backoff_s": float("nan")}, "backoff_s"),
        ({"backoff_s": -1.0}, "backoff_s"),
        ({"backoff_s": float("inf")}, "backoff_s"),
    ],
)
@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_bad_retry_settings_are_refused_when_built(
    tmp_path: Path, cls: Any, kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        cls("http://coord", str(tmp_path), **kwargs)


def test_zero_retries_and_backoff_are_accepted(tmp_path: Path) -> None:
    # Prepare: no retry, no wait
    with Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(_busy), retries=0,
        backoff_s=0.0,
    ) as client:  # fmt: skip
        # Execute / Assert: the one attempt's answer is the refusal
        with pytest.raises(ClientError, match=r"\(after 1 attempt\)$") as caught:
            client.check_in()
    assert caught.value.status == 503
