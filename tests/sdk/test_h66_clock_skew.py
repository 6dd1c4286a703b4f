"""A secure round's deadline is read against the coordinator's clock, not the device's.

The SDK turned a round's `deadline_unix` (the coordinator's clock) into a monotonic deadline with
the device's own wall clock, so a phone whose clock ran minutes fast gave up its stage uploads
and polls at once, and one running slow kept polling minutes after the round had closed. Now the
check-in answer that carried the assignment gives the coordinator's clock (its `Date` header, to
the second, within the request's round trip), and the device's clock counts only when that
header is missing or unusable. Against `SecureFake` (tests/sdk/test_h61_inflight.py) behind
`Stalling` (tests/sdk/test_h64_secure_deadline.py), whose check-in here assigns the round; real
time, deadlines a second or two away, device clocks two minutes off."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.messages import to_json
from protocol.secagg import Stage
from sdk import AsyncClient, Client
from sdk.client import (
    MAX_CLOCK_SKEW_S,
    ClientError,
    SecureRoundReport,
    _http_date,
    _server_now,
)
from sdk.device_store import DeviceStore

from .test_client import SPEC
from .test_h61_inflight import secure_task
from .test_h64_secure_deadline import LIMIT, SLACK_S, Stalling

SKEW_S = 120.0  # minutes off, inside the coordinator's default 300 s signature window
_REAL = object()  # the handler's Date: the real clock's, as a server with a right clock sends


class Assigning:
    """`Stalling(method, suffix)`, whose check-in answers "train" with secure round 101 of task
    1, due `deadline_unix` (real clock), and a `Date` header: the real clock's (`_REAL`), the
    given text, or none (None)."""

    def __init__(
        self, deadline_unix: float, method: str = "GET", suffix: str = "/never",
        date: object = _REAL,
    ) -> None:  # fmt: skip
        self.inner = Stalling(method, suffix)
        self.assignment = replace(secure_task(1, 101), deadline_unix=deadline_unix)
        self.date = date

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/checkin":
            return self.inner(request)
        self.inner.times.append(time.time())
        body = {"action": "train", "retry_after_s": 0.0, "assignment": to_json(self.assignment)}
        headers = {}
        if self.date is _REAL:
            headers["date"] = formatdate(time.time(), usegmt=True)
        elif isinstance(self.date, str):
            headers["date"] = self.date
        return httpx.Response(200, content=json.dumps(body).encode(), headers=headers)


def _run(kind: str, handler: Assigning, root: Path, skew_s: float) -> SecureRoundReport:
    """Check in (task 1) and run the assigned secure round, the device's clock `skew_s` off."""
    delta = np.full(SPEC.size, 0.05, np.float32)

    def clock() -> float:
        return time.time() + skew_s

    kw = {"retries": 1000, "backoff_s": 0.05, "clock": clock}
    if kind == "sync":
        with Client("http://coord", str(root), transport=httpx.MockTransport(handler), **kw) as c:
            a = c.check_in(1).assignment
            assert a is not None
            return c.secure_round(a, lambda p: (delta, 8, 0.0))

    async def go() -> SecureRoundReport:
        async with AsyncClient(
            "http://coord", str(root), transport=httpx.MockTransport(handler), **kw
        ) as c:
            a = (await c.check_in(1)).assignment
            assert a is not None
            return await c.secure_round(a, lambda p: (delta, 8, 0.0))

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_device_whose_clock_runs_fast_completes_the_round(tmp_path: Path, kind: str) -> None:
    # Prepare: the round is due in 10 s (room for a loaded machine; the round takes well under
    # 1 s); the device's clock reads two minutes ahead
    deadline = time.time() + 10.0
    handler = Assigning(deadline)

    # Execute
    report = _run(kind, handler, tmp_path, +SKEW_S)

    # Assert: all four stages ran, before the real deadline. Before, the device read the
    # deadline as two minutes past and sent no stage ("advertise_keys: the round's deadline
    # passed")
    assert report.completed, report.detail
    assert report.stages == [
        str(s) for s in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
    ]
    assert max(handler.inner.times) <= deadline


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_device_whose_clock_runs_slow_stops_polling_by_the_real_deadline(
    tmp_path: Path, kind: str
) -> None:
    # Prepare: the round is due in 0.8 s; its advertise-keys download answers 503 for ever; the
    # device's clock reads two minutes behind
    deadline = time.time() + 0.8
    handler = Assigning(deadline, "GET", f"/stages/{Stage.ADVERTISE_KEYS}")

    # Execute
    report = _run(kind, handler, tmp_path, -SKEW_S)

    # Assert: the polls ended by the real deadline (plus the Date header's 1 s resolution),
    # the round not completed. Before, the device saw two minutes left and polled on (LIMIT
    # 503s, then the handler's 404 raised a ClientError)
    assert not report.completed
    assert "deadline" in report.detail, report.detail
    assert max(handler.inner.times) <= deadline + 1.0 + SLACK_S
    assert handler.inner.stalled < LIMIT
    assert DeviceStore(tmp_path).load_accepted(101) is None


@pytest.mark.parametrize(
    "date",
    [
        None,  # no header: the coordinator as configured today (uvicorn's date_header off)
        "yesterday",
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850 form: not what a server may send
        formatdate(time.time(), usegmt=True) + ", " + formatdate(time.time(), usegmt=True),
        formatdate(time.time() - 2 * MAX_CLOCK_SKEW_S, usegmt=True),  # not this coordinator's
    ],
    # Fixed ids: two of the dates are made at collection, and ids built from them would differ
    # between two collections of the suite (pytest-xdist's workers must collect the same ids).
    ids=["none", "word", "rfc850", "two_dates", "too_old"],
)
def test_without_a_usable_date_the_device_clock_counts(tmp_path: Path, date: str | None) -> None:
    # Prepare: as the fast-clock case, but the answer's Date is missing or unusable
    deadline = time.time() + 2.0
    handler = Assigning(deadline, date=date)

    # Execute
    report = _run("sync", handler, tmp_path, +SKEW_S)

    # Assert: the documented fallback: the deadline read by the device's clock, which says it
    # passed two minutes ago, so no stage is sent (a control: the behaviour before this change)
    assert not report.completed
    # (since helper-68's bound, the round ends at its model download, before any request)
    assert report.detail == "model download: the round's deadline passed", report.detail
    assert not any("/stages/" in p for _, p in handler.inner.fake.seen)


def test_an_assignment_the_client_did_not_receive_reads_the_device_clock(tmp_path: Path) -> None:
    # Prepare: a check-in with a right Date noted round 101 due in 2 s; the app then runs an
    # assignment of the same round with another deadline (one it made up: not noted)
    deadline = time.time() + 2.0
    handler = Assigning(deadline)
    delta = np.full(SPEC.size, 0.05, np.float32)
    with Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(handler),
        clock=lambda: time.time() + SKEW_S,
    ) as c:  # fmt: skip
        c.check_in(1)
        other = replace(handler.assignment, deadline_unix=deadline + 1.0)

        # Execute
        report = c.secure_round(other, lambda p: (delta, 8, 0.0))

    # Assert: read by the device's clock (past), no stage sent
    assert not report.completed
    # (since helper-68's bound, the round ends at its model download, before any request)
    assert report.detail == "model download: the round's deadline passed", report.detail


def test_an_assignment_refused_by_the_check_in_is_not_noted(tmp_path: Path) -> None:
    # An answer for another task than asked is refused (bad_response) and its deadline unused
    handler = Assigning(time.time() + 2.0)
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(ClientError):
            c.check_in(2)
        assert c._core._round_ends == {}


# -- the rule, piece by piece -----------------------------------------------------------------


def test_http_date_reads_imf_fixdate_only() -> None:
    assert _http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0
    assert _http_date(formatdate(1795938540.0, usegmt=True)) == 1795938540.0
    for bad in (
        None, "", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT", "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:60 GMT",
        "Sun Nov  6 08:49:37 1994", "Sun, 06 Nov 1994 08:49:37 -0000",
        " Sun, 06 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT\n",
        "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, ٠٦ Nov 1994 08:49:37 GMT",  # Arabic-Indic digits, which int() would read
    ):  # fmt: skip
        assert _http_date(bad) is None, bad


@settings(max_examples=200, deadline=None)
@given(
    made=st.floats(1e9, 4e9),  # the coordinator's clock when it made the Date
    before=st.floats(0, 30),  # request in flight before the Date was made, seconds
    after=st.floats(0, 30),  # and after, until the answer arrived
    skew=st.floats(-MAX_CLOCK_SKEW_S, MAX_CLOCK_SKEW_S),
)
def test_server_now_is_within_what_the_header_allows(
    made: float, before: float, after: float, skew: float
) -> None:
    rtt = before + after
    arrived = made + after  # the coordinator's clock at arrival
    date = float(math.floor(made))
    device_now = arrived + skew

    est = _server_now(date, device_now, rtt)

    assert est is not None
    # Never further from the coordinator's clock than the header's resolution and the round
    # trip allow; the device clock kept as is when it lies within that (it agrees)
    assert abs(est - arrived) <= 1.0 + rtt + 1e-6
    if date <= device_now <= date + 1.0 + rtt:
        assert est == device_now
    else:
        assert est in (date, date + 1.0 + rtt)


def test_server_now_is_none_without_a_usable_header() -> None:
    now = 1.8e9
    assert _server_now(None, now, 0.1) is None
    assert _server_now(now - MAX_CLOCK_SKEW_S - 5.0, now, 0.1) is None  # not the coordinator's
    assert _server_now(now + MAX_CLOCK_SKEW_S + 5.0, now, 0.1) is None
    assert _server_now(now - 100.0, now, math.nan) is None
    assert _server_now(now - 100.0, now, -1.0) is None
    assert _server_now(now - 100.0, now, 0.5) == now - 100.0 + 1.5  # fast by ~100 s: corrected
