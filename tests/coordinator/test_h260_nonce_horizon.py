"""A signature window raised at a restart does not reopen replay (s25/http review, finding 3).

Nonces are pruned at twice the current window. Before, a coordinator restarted with a larger
`--signature-window` checked a timestamp against that window only, so a captured request whose
nonce the old window had pruned was accepted again (the reviewer's probe: window 2 s, prune,
restart with 3600 s, replay answered 200). Now the store keeps the prune's cut-off (the nonce
horizon, a `meta` row) and the verifier refuses any timestamp before it: 401 stale_timestamp.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx

from coordinator.service import ServerThread, ServiceConfig, Store
from protocol import auth

from .test_service_hardening import _register, _signed
from .test_service_support import ADMIN, create_task


def _config(db: Path, window_s: float) -> ServiceConfig:
    return ServiceConfig(db_path=str(db), admin_token=ADMIN, signature_window_s=window_s)


def test_a_request_whose_nonce_was_pruned_is_refused_after_a_larger_window(
    tmp_path: Path,
) -> None:
    # Prepare: a 1 s window; a device's signed check-in, answered, then pruned with its nonce
    db = tmp_path / "plume.db"
    key = auth.generate_private_key()
    server = ServerThread(_config(db, 1.0))
    with server as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http)
        assert _register(http, key).status_code == 200
        body = json.dumps({"task_id": task_id}).encode()
        signed = {
            **_signed(key, "POST", "/v1/checkin", 0, body),
            "content-type": "application/json",
        }
        assert http.post("/v1/checkin", content=body, headers=signed).status_code == 200
        replay = http.post("/v1/checkin", content=body, headers=signed)
        assert replay.json()["reason"] == "replayed_nonce", replay.text
        ts = int(signed["x-plume-timestamp"])
        # the tick loop's prune, as it runs once the nonce is twice the window old
        pruned = server.app.state.verifier.prune(now_ms=ts + 2 * 1000 + 1)
        assert pruned >= 1
    # Execute: restart on the same database with a window of an hour; the captured request
    with ServerThread(_config(db, 3600.0)) as url, httpx.Client(base_url=url) as http:
        again = http.post("/v1/checkin", content=body, headers=signed)
        fresh_body = json.dumps({"task_id": task_id}).encode()
        fresh = http.post(
            "/v1/checkin",
            content=fresh_body,
            headers={
                **_signed(key, "POST", "/v1/checkin", 0, fresh_body),
                "content-type": "application/json",
            },
        )
    # Assert: the replay is refused with a reason that says why; a new request goes through
    assert again.status_code == 401, again.text
    assert again.json()["reason"] == "stale_timestamp", again.text
    assert "nonce" in again.json()["detail"], again.text
    assert fresh.status_code == 200, fresh.text


def test_the_nonce_horizon_is_kept_in_the_store_and_never_lowered(tmp_path: Path) -> None:
    db = str(tmp_path / "plume.db")
    store = Store(db)
    try:
        assert store.nonce_horizon_ms == 0  # a new store: no prune yet
        assert store.remember_nonce("d" * 32, "n1", 1_000)
        assert store.remember_nonce("d" * 32, "n2", 5_000)
        assert store.prune_nonces(2_000) == 1
        assert store.nonce_horizon_ms == 2_000
        assert store.prune_nonces(1_500) == 0  # a smaller window's prune: the horizon stays
        assert store.nonce_horizon_ms == 2_000
    finally:
        store.close()
    store = Store(db)  # a restart
    try:
        assert store.nonce_horizon_ms == 2_000
    finally:
        store.close()


def test_a_store_without_a_horizon_row_opens_with_none(tmp_path: Path) -> None:
    # A store written before the horizon existed has no meta row for it: it opens as it is,
    # with no horizon until its first prune, and keeps its schema version.
    db = str(tmp_path / "plume.db")
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("DELETE FROM meta WHERE key <> 'schema_version'")
    con.commit()
    before = con.execute("SELECT key, value FROM meta").fetchall()
    con.close()
    store = Store(db)
    try:
        assert store.nonce_horizon_ms == 0
        # The one row opening adds is the database's incarnation (a store older than it gets
        # one on open: test_s54a_incarnation); the rest stays as it was.
        after = store._query("SELECT key, value FROM meta")
        assert [row for row in after if row[0] != "incarnation"] == before
        store.prune_nonces(7_000)
        assert store._query("SELECT value FROM meta WHERE key='nonce_horizon_ms'") == [("7000",)]
    finally:
        store.close()


def test_a_hand_edited_horizon_that_is_not_a_number_is_ignored(tmp_path: Path) -> None:
    db = str(tmp_path / "plume.db")
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("INSERT INTO meta(key, value) VALUES ('nonce_horizon_ms', 'soon')")
    con.commit()
    con.close()
    store = Store(db)
    try:
        assert store.nonce_horizon_ms == 0
        store.prune_nonces(10)
        assert store.nonce_horizon_ms == 10
    finally:
        store.close()
