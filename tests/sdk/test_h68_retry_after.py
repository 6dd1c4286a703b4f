"""A stage still open (425) is polled again after a bounded, positive wait, whatever its
`Retry-After` says: fractional (the coordinator's "0.25"), missing, zero, negative, huge, not a
number or not finite.

`sdk.client` (Client/AsyncClient) takes a finite non-negative Retry-After capped at 30 s, else
its backoff, and polls at least `_MIN_POLL_S` apart within the round's deadline: the tests on it
are controls. `sdk.secure.HttpSecureDevice` (the loopback stage router's test device) clamped
the header to [0, 10 x poll_s]: "Retry-After: 0" or a negative one made it poll with no pause
at all, as fast as the server answered, for the whole `timeout_s` (the first test failed)."""

from __future__ import annotations

import math
import types
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdk.secure as secure_mod
from protocol.names import Header
from sdk import Client
from sdk.client import _MIN_POLL_S, _Core
from sdk.secure import HttpSecureDevice, SecureParticipant

from .test_client import SPEC
from .test_h61_inflight import SecureFake, secure_task

# The header values a server (or a proxy) might send; None: no header.
ODD = [None, "0.25", "0", "-0", "-5", "1e9", "1e400", "-inf", "inf", "nan", "soon", "", "1, 2"]


class OpenOnce:
    """`SecureFake`, except that the first download of each stage is answered 425 (still open)
    with `Retry-After: value` (no header when None)."""

    def __init__(self, value: str | None) -> None:
        self.fake = SecureFake()
        self.value = value
        self.opened: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and "/stages/" in path and path not in self.opened:
            self.opened.add(path)
            headers = {} if self.value is None else {Header.RETRY_AFTER: self.value}
            return httpx.Response(
                425, json={"reason": "too_early", "detail": "open"}, headers=headers
            )
        return self.fake(request)


@pytest.mark.parametrize("value", ODD)
def test_the_http_test_device_pauses_between_polls(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    # Prepare: every stage is still open at the first poll; the device's sleeps are recorded
    sleeps: list[float] = []
    fake_time = types.SimpleNamespace(**{**vars(secure_mod.time), "sleep": sleeps.append})
    monkeypatch.setattr(secure_mod, "time", fake_time)
    handler = OpenOnce(value)
    with httpx.Client(base_url="http://coord", transport=httpx.MockTransport(handler)) as http:
        device = HttpSecureDevice(http, "dev-0", SecureParticipant(SPEC.size), poll_s=0.05)
        delta = np.full(SPEC.size, 0.05, np.float32)

        # Execute: round 101 (the fake's task 1)
        done = device.run_round(101, handler.fake.params(1), delta, 1, np.random.default_rng(0))

    # Assert: completed; one pause per open stage, each positive and at most 10 x poll_s.
    # Before, "0" and negative values gave pauses of 0 (a busy loop until timeout_s)
    assert done
    assert len(sleeps) == 3, sleeps
    assert all(0.05 <= s <= 0.5 for s in sleeps), sleeps


@pytest.mark.parametrize("value", ODD)
def test_the_client_pauses_between_polls_within_bounds(tmp_path: Path, value: str | None) -> None:
    # Control: the SDK client's secure round against the same stages
    sleeps: list[float] = []
    handler = OpenOnce(value)
    with Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(handler), sleep=sleeps.append
    ) as client:
        report = client.secure_round(
            secure_task(1, 101), lambda p: (np.full(SPEC.size, 0.05, np.float32), 8, 0.0)
        )
    assert report.completed, report.detail
    assert len(sleeps) == 3, sleeps
    assert all(_MIN_POLL_S <= s <= 30.0 for s in sleeps), sleeps


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> _Core:
    return _Core(str(tmp_path_factory.mktemp("core")), retries=4, backoff_s=0.2, clock=lambda: 0.0)


@settings(
    max_examples=300, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(
    text=st.one_of(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-(10**30), 10**30).map(str),
        st.from_regex(r"[-+]?[0-9]{0,400}(\.[0-9]{0,50})?(e[-+]?[0-9]{1,4})?", fullmatch=True),
    ),
    attempt=st.integers(0, 10),
)
def test_any_retry_after_gives_a_finite_bounded_wait(core: _Core, text: str, attempt: int) -> None:
    # Whatever the header, the wait before a retry is a finite number of seconds >= 0: the
    # header's (at most 30 s) when it is a finite non-negative number, else the backoff
    # (a Retry-After is waited up to 20 % longer, RETRY_AFTER_SPREAD; the backoff is
    # backoff_s * 2**attempt, capped, with equal jitter: half of it to all of it)
    wait = core.delay(attempt, httpx.Response(503, headers={Header.RETRY_AFTER: text}))
    full = min(core.backoff_s * 2**attempt, 60.0)
    assert math.isfinite(wait) and wait >= 0
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and number >= 0:
        assert min(number, 30.0) <= wait <= 1.2 * min(number, 30.0)
    else:
        assert full / 2 <= wait <= full
