"""`POST /v1/devices` answers its 429 and its 401 `unsigned` before reading the body (s45).

Stop 44 moved the JSON routes' header-decided refusals before the body (`app._before_body`),
but registration kept two of them after it: the address's rate limit (a FastAPI dependency,
which runs once the body is parsed) and the signature headers' form (checked inside the
endpoint). A request with `Expect: 100-continue` that was over the limit or unsigned got
`100 Continue` and then, if it sent nothing, a 408 at the body timeout; a flood's bodies were
read in full before the 429. Now the order is 415, 429, 401 `unsigned`, then the body (the
public key's 400s and the signature's other 401s need it). The quota runs once a request.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, create_app
from protocol import auth
from protocol.names import Reason

from .test_s44_api_early_refusals import JSON, _answer, _connect, _head
from .test_service_hardening import FakeClock, _register_body, _signed


@pytest.fixture
def limited(tmp_path: Path) -> tuple[ServiceConfig, FakeClock]:
    # A burst of two registrations an address, refilled once per 100 s on a clock only the
    # test moves (it never moves here)
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), register_rate_per_s=0.01, register_burst=2
    )
    return cfg, FakeClock()


def _ask(http: httpx.Client, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """Send a registration's head with `Expect: 100-continue` and no body: the answer."""
    head = _head(
        "POST", "/v1/devices", {**headers, "expect": "100-continue", "content-length": "99"}
    )
    with _connect(http) as s:
        s.sendall(head)
        status, answer, body, _ = _answer(s)
    return status, answer, body


def test_an_unsigned_registration_is_refused_before_its_body(
    limited: tuple[ServiceConfig, FakeClock],
) -> None:
    # Prepare
    cfg, clock = limited
    with ServerThread(cfg, app=create_app(cfg, rate_clock=clock)) as url:
        with httpx.Client(base_url=url) as http:
            # Execute: no signature headers; then a device field of the wrong form
            bare = _ask(http, {"content-type": JSON})
            bad = _ask(http, {"content-type": JSON, "x-plume-device": "zz"})
    # Assert: 401 at once, no 100 Continue first (before: 100, then 408 at the body timeout)
    for status, answer, body in (bare, bad):
        assert status == 401, body
        assert json.loads(body)["reason"] == Reason.UNSIGNED
        assert answer["connection"] == "close"


def test_a_registration_over_the_limit_is_refused_before_its_body(
    limited: tuple[ServiceConfig, FakeClock],
) -> None:
    # Prepare: two devices use the address's burst of two
    cfg, clock = limited
    keys = [auth.generate_private_key() for _ in range(3)]
    with ServerThread(cfg, app=create_app(cfg, rate_clock=clock)) as url:
        with httpx.Client(base_url=url) as http:
            for key in keys[:2]:
                body = _register_body(key)
                headers = {**_signed(key, "POST", "/v1/devices", 0, body), "content-type": JSON}
                r = http.post("/v1/devices", content=body, headers=headers)
                # Assert: each spends one token, not two (run as a dependency too, the quota
                # would refuse the second)
                assert r.status_code == 200, r.text
            # Execute: the third, signed, its body not sent
            body = _register_body(keys[2])
            status, answer, got = _ask(
                http, {**_signed(keys[2], "POST", "/v1/devices", 0, body), "content-type": JSON}
            )
    # Assert: 429 with Retry-After at once (before: 100 Continue, then 408)
    assert status == 429, got
    assert json.loads(got)["reason"] == Reason.RATE_LIMITED
    assert int(answer["retry-after"]) >= 1
    assert answer["connection"] == "close"


def test_a_signed_registration_gets_100_continue_and_is_served(
    limited: tuple[ServiceConfig, FakeClock],
) -> None:
    # Prepare
    cfg, clock = limited
    key = auth.generate_private_key()
    body = _register_body(key)
    headers = {**_signed(key, "POST", "/v1/devices", 0, body), "content-type": JSON}
    head = _head(
        "POST",
        "/v1/devices",
        {**headers, "expect": "100-continue", "content-length": str(len(body))},
    )
    with ServerThread(cfg, app=create_app(cfg, rate_clock=clock)) as url:
        with httpx.Client(base_url=url) as http, _connect(http) as s:
            # Execute
            s.sendall(head)
            interim, _, _, rest = _answer(s)
            s.sendall(body)
            status, _, answer, _ = _answer(s, rest)
    # Assert
    assert interim == 100
    assert status == 200, answer
    assert json.loads(answer)["created"] is True
