"""A server clock that was once ahead no longer locks every device out (s25/diff, finding 1).

c0d5947's nonce horizon (the latest nonce prune's cut-off, kept in the database) refuses a
signed timestamp before it, so a window raised at a restart cannot replay a request whose
nonce was pruned. A prune that ran while the host clock was an hour ahead (a VM resumed with a
fast clock, set back by NTP since) put the horizon 50 minutes into the real future: every
correctly timestamped request, registrations included, was 401 stale_timestamp until real
time passed it, across restarts. Now a horizon after the current time is lowered to the
current time (at the first signed request that sees it, at a prune, at open) with a WARNING,
and no further: a request signed from then on passes, one timestamped before, such as a request
accepted before the clock jumped whose nonce the fast prune deleted, stays refused. The
reviewer's min(horizon, now - window) was not taken: the window check already refuses every
timestamp before now - window, so it disables the horizon (test_h260's replay answered 200).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.auth import RequestVerifier
from coordinator.service.errors import ApiError
from protocol import auth

from .test_service_hardening import _register
from .test_service_support import ADMIN, create_task, signed_headers

HOUR_MS = 3_600_000
WINDOW_S = 300.0  # serve's default --signature-window


def _registration(key: bytes, ts_ms: int) -> dict[str, str]:
    return auth.sign_request(
        key, method="POST", target="/v1/devices", round_id=0, body=b"{}", timestamp_ms=ts_ms
    )


def _verify(v: RequestVerifier, key: bytes, headers: dict[str, str], now_ms: int) -> str:
    """'accepted', or the 401's reason."""
    try:
        v.verify(
            method="POST",
            target="/v1/devices",
            headers=headers,
            body=b"{}",
            presented_key=auth.public_key_bytes(key),
            now_ms=now_ms,
        )
    except ApiError as exc:
        assert exc.status == 401, exc
        return exc.reason
    return "accepted"


def _ahead_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "ahead of the clock" in r.getMessage()
    ]


def test_a_request_signed_after_the_clock_is_set_back_is_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a device registers on time; the tick loop's prune runs with the clock 1 h ahead
    real = 1_750_000_000_000  # Unix ms, the verifier's injected clock
    store = Store(str(tmp_path / "plume.db"))
    try:
        v = RequestVerifier(store, window_s=WINDOW_S)
        key = auth.generate_private_key()
        before = _registration(key, real)
        assert _verify(v, key, before, real) == "accepted"
        assert v.prune(now_ms=real + HOUR_MS) == 1  # the registration's nonce is gone
        assert store.nonce_horizon_ms == real + HOUR_MS - 600_000
        # Execute: the clock is right again; a fresh request, the one captured before the jump
        with caplog.at_level(logging.WARNING, logger="plume.coordinator"):
            fresh = _verify(v, key, _registration(key, real + 1000), real + 1000)
        replay = _verify(v, key, before, real + 2000)
        later = _verify(v, key, _registration(key, real + 60_000), real + 60_000)
    finally:
        store.close()
    # Assert: fresh requests pass (401 stale_timestamp before the fix); the replay does not
    assert fresh == "accepted"
    assert later == "accepted"
    assert replay == "stale_timestamp"  # what min(horizon, now - window) let through
    warned = _ahead_warnings(caplog)
    assert len(warned) == 1 and "2999.0 s ahead" in warned[0], warned
    assert "at a signed request" in warned[0]


def test_the_lowered_horizon_is_kept_and_a_prune_lowers_one_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real = 1_750_000_000_000
    db = str(tmp_path / "plume.db")
    store = Store(db)
    try:
        v = RequestVerifier(store, window_s=WINDOW_S)
        assert store.remember_nonce("d" * 32, "n1", real - 1000)
        assert v.prune(now_ms=real + HOUR_MS) == 1
        with caplog.at_level(logging.WARNING, logger="plume.coordinator"):
            v.prune(now_ms=real)  # the next tick's prune, the clock set back
        # just after the newest timestamp pruned, which is after this prune's own cut-off
        assert store.nonce_horizon_ms == real - 999
        v.prune(now_ms=real + 60_000)  # the horizon stays until a cut-off passes it
        assert store.nonce_horizon_ms == real - 999
    finally:
        store.close()
    warned = _ahead_warnings(caplog)
    assert len(warned) == 1 and "3000.0 s ahead" in warned[0], warned
    assert "at a nonce prune" in warned[0] and "1.0 s before now" in warned[0]
    store = Store(db)  # written to the database: a restart keeps both
    try:
        assert store.nonce_horizon_ms == real - 999
        forgotten = store._query("SELECT value FROM meta WHERE key='nonce_forgotten_ms'")
        assert forgotten == [(str(real - 1000),)]
    finally:
        store.close()


def test_a_nonce_pruned_with_a_future_timestamp_lowers_the_horizon_to_now(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The case the horizon cannot keep closed without locking devices out: a device whose
    # clock was as far ahead as the server's was had a request accepted, and its nonce pruned.
    real = 1_750_000_000_000
    store = Store(str(tmp_path / "plume.db"))
    try:
        v = RequestVerifier(store, window_s=WINDOW_S)
        key = auth.generate_private_key()
        assert _verify(v, key, _registration(key, real + HOUR_MS), real + HOUR_MS) == "accepted"
        v.prune(now_ms=real + HOUR_MS + 700_000)
        with caplog.at_level(logging.WARNING, logger="plume.coordinator"):
            fresh = _verify(v, key, _registration(key, real), real)
        horizon = store.nonce_horizon_ms
    finally:
        store.close()
    assert fresh == "accepted"
    assert horizon == real
    warned = _ahead_warnings(caplog)
    assert len(warned) == 1 and "not before now" in warned[0], warned


def test_a_store_opened_with_a_horizon_ahead_of_the_clock_lowers_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the prune ran with the wall clock 1 h ahead; the coordinator then stops
    db = str(tmp_path / "plume.db")
    key = auth.generate_private_key()
    store = Store(db)
    real = int(time.time() * 1000)
    before = _registration(key, real)
    try:
        v = RequestVerifier(store, window_s=WINDOW_S)
        assert _verify(v, key, before, real) == "accepted"
        v.prune(now_ms=real + HOUR_MS)
    finally:
        store.close()
    # Execute: it starts again with the clock right
    with caplog.at_level(logging.WARNING, logger="plume.coordinator"):
        store = Store(db)
    try:
        opened = int(time.time() * 1000)
        horizon = store.nonce_horizon_ms
        v = RequestVerifier(store, window_s=WINDOW_S)
        fresh = _verify(v, key, _registration(key, opened), opened)
        replay = _verify(v, key, before, opened)
    finally:
        store.close()
    # Assert
    assert real <= horizon <= opened
    assert fresh == "accepted"
    assert replay == "stale_timestamp"
    warned = _ahead_warnings(caplog)
    assert len(warned) == 1 and "at open" in warned[0], warned


def test_a_store_without_the_forgotten_row_lowers_an_ahead_horizon_to_now(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A store c0d5947 wrote keeps the horizon only: how far back to lower it is unknown, so it
    # goes to the clock at open; the request accepted before the jump stays refused.
    db = str(tmp_path / "plume.db")
    key = auth.generate_private_key()
    store = Store(db)
    real = int(time.time() * 1000)
    before = _registration(key, real)
    try:
        v = RequestVerifier(store, window_s=WINDOW_S)
        assert _verify(v, key, before, real) == "accepted"
        v.prune(now_ms=real + HOUR_MS)
    finally:
        store.close()
    con = sqlite3.connect(db)
    con.execute("DELETE FROM meta WHERE key='nonce_forgotten_ms'")
    con.commit()
    con.close()
    while int(time.time() * 1000) <= real:  # the clock at open is after the request
        time.sleep(0.001)
    opening = int(time.time() * 1000)
    with caplog.at_level(logging.WARNING, logger="plume.coordinator"):
        store = Store(db)
    try:
        opened = int(time.time() * 1000)
        horizon = store.nonce_horizon_ms
        v = RequestVerifier(store, window_s=WINDOW_S)
        replay = _verify(v, key, before, opened)
        fresh = _verify(v, key, _registration(key, opened), opened)
    finally:
        store.close()
    assert opening <= horizon <= opened
    assert replay == "stale_timestamp"
    assert fresh == "accepted"
    warned = _ahead_warnings(caplog)
    assert len(warned) == 1 and "at open" in warned[0] and "unknown" in warned[0], warned


def test_over_http_across_a_restart(tmp_path: Path) -> None:
    # The reviewer's scenario through serve: a check-in on time, a prune with the clock 1 h
    # ahead, then the clock right again, before and after a restart.
    db = tmp_path / "plume.db"
    config = ServiceConfig(db_path=str(db), admin_token=ADMIN, signature_window_s=WINDOW_S)
    key = auth.generate_private_key()
    server = ServerThread(config)
    with server as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http)
        assert _register(http, key).status_code == 200
        body = json.dumps({"task_id": task_id}).encode()
        captured = {
            **signed_headers(key, "POST", "/v1/checkin", 0, body),
            "content-type": "application/json",
        }
        assert http.post("/v1/checkin", content=body, headers=captured).status_code == 200
        while int(time.time() * 1000) <= int(captured["x-plume-timestamp"]):
            time.sleep(0.001)  # the fresh request is signed after the captured one
        now = int(time.time() * 1000)
        assert server.app.state.verifier.prune(now_ms=now + HOUR_MS) >= 2
        fresh = {
            **signed_headers(key, "POST", "/v1/checkin", 0, body),
            "content-type": "application/json",
        }
        first = http.post("/v1/checkin", content=body, headers=fresh)
        replay = http.post("/v1/checkin", content=body, headers=captured)
    with ServerThread(config) as url, httpx.Client(base_url=url) as http:
        fresh = {
            **signed_headers(key, "POST", "/v1/checkin", 0, body),
            "content-type": "application/json",
        }
        after_restart = http.post("/v1/checkin", content=body, headers=fresh)
        replay_after_restart = http.post("/v1/checkin", content=body, headers=captured)
    assert first.status_code == 200, first.text  # 401 stale_timestamp before the fix
    assert after_restart.status_code == 200, after_restart.text
    for refused in (replay, replay_after_restart):
        assert refused.status_code == 401, refused.text
        assert refused.json()["reason"] == "stale_timestamp", refused.text


def test_with_a_clock_that_only_goes_forward_the_horizon_is_never_lowered(
    tmp_path: Path,
) -> None:
    # The replay c0d5947 closed, at the verifier: a 1 s window's prune forgets a request's
    # nonce; the same store under a 3600 s window refuses the request again, and nothing lowers
    # the horizon; neither does a step back of the clock by less than twice the window.
    db = str(tmp_path / "plume.db")
    key = auth.generate_private_key()
    t = 1_750_000_000_000
    captured = _registration(key, t)
    store = Store(db)
    try:
        small = RequestVerifier(store, window_s=1.0)
        assert _verify(small, key, captured, t) == "accepted"
        assert small.prune(now_ms=t + 2001) == 1
        assert store.nonce_horizon_ms == t + 1
        large = RequestVerifier(store, window_s=3600.0)
        assert _verify(large, key, captured, t + 5000) == "stale_timestamp"
        assert _verify(large, key, captured, t + 1) == "stale_timestamp"  # clock back 2 s
        assert store.nonce_horizon_ms == t + 1
        # a fresh request signed after the horizon passes
        assert _verify(large, key, _registration(key, t + 5000), t + 5000) == "accepted"
    finally:
        store.close()
