"""`POST /v1/devices` with the wrong Content-Type is 415 before its address's registration
token is spent (docs/http-api.md: a 415 is decided before any state changes).

Before: the rate-limit dependency ran first, so with `--register-rate` a mislabelled
registration spent the address's token, and the same request re-sent with the right header
was then 429 `rate_limited`.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from coordinator.service import ServerThread, ServiceConfig, create_app
from protocol import auth
from protocol.names import Reason

from .test_service_hardening import FakeClock, _metric, _refused, _register_body, _signed


def test_a_mislabelled_registration_is_415_and_spends_no_rate_token(tmp_path: Path) -> None:
    # Prepare: a burst of one registration, refilled once per 100 s on a clock only the
    # test moves (it never moves here)
    clock = FakeClock()
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), register_rate_per_s=0.01, register_burst=1
    )
    app = create_app(cfg, rate_clock=clock)
    key = auth.generate_private_key()
    body = _register_body(key)
    signed = _signed(key, "POST", "/v1/devices", 0, body)
    with ServerThread(cfg, app=app) as url, httpx.Client(base_url=url) as http:
        # Execute: the signed registration labelled text/plain, twice, then the same
        # signed request with the right label
        wrong = [
            http.post("/v1/devices", content=body, headers={**signed, "content-type": "text/plain"})
            for _ in range(2)
        ]
        limited = _metric(http, "plume_registrations_rate_limited_total")
        right = http.post(
            "/v1/devices", content=body, headers={**signed, "content-type": "application/json"}
        )
    # Assert: both are 415, none counted as rate limited; the one token was still there, so
    # the same signed request (its nonce unspent too) registers the device
    for r in wrong:
        _refused(r, 415, Reason.UNSUPPORTED_MEDIA_TYPE)
    assert limited == 0.0
    assert right.status_code == 200, right.text
    assert right.json()["created"] is True
