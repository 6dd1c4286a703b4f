"""Bounded storage of accepted update frames (`ServiceConfig.keep_frames_rounds`, `plume
coordinator serve --keep-frames N`): pruned rows answer idempotent retries and `round_outcome`
exactly as before, open rounds are never pruned, a version-2 database migrates, and a failed
prune never touches the publish it follows."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service import store as store_module
from coordinator.service.rounds import Coordinator
from coordinator.service.store import SCHEMA_VERSION, PruneResult, Store, StoreError
from protocol import auth
from protocol.messages import Assignment, UploadOutcome
from protocol.names import Header
from protocol.names import Path as ApiPath
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SPEC,
    SoftmaxTrainer,
    admin_get,
    create_task,
    local_data,
    serve_cli,
    task_config,
)

CLOSED = ("committed", "abandoned")

# -- the store on its own ----------------------------------------------------------------------


def _task(store: Store) -> int:
    return store.create_task({"name": "t"}, "active", 0.0)


def _round(
    store: Store, task_id: int, seq: int, state: str, updates: dict[str, tuple[str, bytes]]
) -> int:
    """A round of `task_id` in `state` holding `updates` ({device: (key, frame)})."""
    round_id = store.open_round(task_id, seq, 0, sorted(updates), 4, 1, 1.0, 2.0)
    with store.transaction() as db:
        for device, (key, frame) in updates.items():
            store.insert_update(db, round_id, device, key, frame, 1.5)
    if state == "abandoned":
        store.abandon(round_id, task_id, {}, "active", 3.0)
    elif state != "open":
        store.set_round_state(round_id, state)
    return round_id


def _stored(store: Store, round_id: int) -> dict[str, bytes]:
    rows = store._query("SELECT device_id, frame FROM updates WHERE round_id=?", (round_id,))
    return {str(d): bytes(f) for d, f in rows}


def _frame_sum(store: Store) -> int:
    return int(store._query("SELECT COALESCE(SUM(length(frame)), 0) FROM updates")[0][0])


DEVICES = ["d0", "d1", "d2"]
ROUND = st.tuples(
    st.sampled_from(["committed", "abandoned", "open", "aggregating"]),
    st.dictionaries(
        st.sampled_from(DEVICES),
        st.tuples(st.sampled_from(["k0", "k1"]), st.binary(min_size=1, max_size=48)),
        max_size=3,
    ),
)


@given(
    rounds=st.lists(ROUND, min_size=1, max_size=5),
    probes=st.lists(st.binary(max_size=48), max_size=4),
    keep=st.integers(min_value=0, max_value=5),
)
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
def test_find_update_answers_the_same_before_and_after_pruning(
    rounds: list[tuple[str, dict[str, tuple[str, bytes]]]], probes: list[bytes], keep: int
) -> None:
    # Prepare: a task's rounds in any mix of states, and the questions a retry can ask: the
    # stored frame, the empty one (round_outcome), a byte flipped, one byte more or fewer,
    # arbitrary frames, and a device that never uploaded
    store = Store(":memory:")
    task_id = _task(store)
    other = _task(store)  # another task's closed round, which pruning this task never touches
    other_round = _round(store, other, 0, "committed", {"d0": ("k0", b"other task")})
    ids = [_round(store, task_id, seq, state, ups) for seq, (state, ups) in enumerate(rounds)]
    questions: list[tuple[int, str, bytes]] = []
    for round_id, (_state, ups) in zip(ids, rounds, strict=True):
        for device in [*DEVICES, "never"]:
            frame = ups[device][1] if device in ups else b"x"
            flipped = bytes([frame[0] ^ 1]) + frame[1:]
            for asked in (frame, b"", flipped, frame + b"\0", frame[:-1], *probes):
                questions.append((round_id, device, asked))
    before = [store.find_update(*q) for q in questions]
    open_before = {r: _stored(store, r) for r, (s, _) in zip(ids, rounds, strict=True)}
    total_before = _frame_sum(store)

    # Execute
    done = store.prune_frames(task_id, keep)

    # Assert: every answer identical; exactly the closed rounds beyond the `keep` most recent
    # lost their frames; open, aggregating and the other task's rounds kept theirs
    assert [store.find_update(*q) for q in questions] == before
    closed = [r for r, (s, _) in zip(ids, rounds, strict=True) if s in CLOSED]
    pruned = set(closed[: max(len(closed) - keep, 0)])
    for round_id, (state, ups) in zip(ids, rounds, strict=True):
        expect = dict.fromkeys(ups, b"") if round_id in pruned else open_before[round_id]
        assert _stored(store, round_id) == expect, (round_id, state)
    assert _stored(store, other_round) == {"d0": b"other task"}
    freed = sum(len(f) for r in pruned for f in open_before[r].values())
    assert done == PruneResult(sum(len(open_before[r]) for r in pruned), freed)
    assert _frame_sum(store) == total_before - freed == store.frame_bytes
    # Pruning again changes nothing
    assert store.prune_frames(task_id, keep) == PruneResult(0, 0)
    store.close()


def test_keep_2_prunes_all_but_the_two_most_recent_closed_rounds(tmp_path: Path) -> None:
    # Prepare: closed rounds and, among them, an open one and an aggregating one (the rule
    # must not depend on where the unclosed rounds sit)
    store = Store(tmp_path / "plume.db")
    task_id = _task(store)
    states = ["committed", "abandoned", "committed", "open", "committed", "committed"]
    states.append("aggregating")
    ids = [
        _round(store, task_id, seq, state, {"d0": ("k", bytes([seq]) * 100)})
        for seq, state in enumerate(states)
    ]

    # Execute
    done = store.prune_frames(task_id, 2)

    # Assert: rounds 0, 1, 2 pruned (the two most recent closed are seq 4 and 5); the open
    # and aggregating rounds keep their frames, and the kept digest answers for the pruned
    assert done == PruneResult(3, 300)
    assert [len(_stored(store, r)["d0"]) for r in ids] == [0, 0, 0, 100, 100, 100, 100]
    assert store.find_update(ids[0], "d0", bytes([0]) * 100) == ("k", 100, True)
    assert store.find_update(ids[0], "d0", bytes([1]) * 100) == ("k", 100, False)
    assert store.updates(ids[3])[0].frame == bytes([3]) * 100  # open: re-decodable
    assert store._query(
        "SELECT pruned_len, pruned_sha256 FROM updates WHERE round_id=?", (ids[0],)
    ) == [(100, hashlib.sha256(bytes([0]) * 100).digest())]
    # N=0 then prunes every closed round, still none of the open ones
    assert store.prune_frames(task_id, 0) == PruneResult(2, 200)
    assert [len(_stored(store, r)["d0"]) for r in ids] == [0, 0, 0, 100, 0, 0, 100]
    store.close()


def test_the_frame_bytes_count_follows_commits_only(tmp_path: Path) -> None:
    # Prepare
    store = Store(tmp_path / "plume.db")
    task_id = _task(store)
    round_id = _round(store, task_id, 0, "open", {"d0": ("k", b"a" * 10)})

    # Execute: an insert whose transaction rolls back (a frame the codec refused)
    with pytest.raises(RuntimeError), store.transaction() as db:
        store.insert_update(db, round_id, "d1", "k", b"b" * 7, 1.0)
        raise RuntimeError("refused")

    # Assert: not counted; a reopened store counts the same from the table
    assert store.frame_bytes == 10 == _frame_sum(store)
    store.close()
    assert Store(tmp_path / "plume.db").frame_bytes == 10


_V2_SCHEMA = store_module._SCHEMA.replace("    pruned_len INTEGER,\n    pruned_sha256 BLOB,\n", "")


def test_a_version_2_database_gains_the_columns_and_prunes(tmp_path: Path) -> None:
    # Prepare: a version-2 file (no pruned_len / pruned_sha256) with one committed round's
    # frame and one open round's
    assert "pruned" not in _V2_SCHEMA
    db = tmp_path / "v2.db"
    con = sqlite3.connect(db)
    con.executescript(_V2_SCHEMA)
    con.executescript(
        """
        INSERT INTO meta VALUES ('schema_version', '2');
        INSERT INTO tasks(config_json, state, created_unix) VALUES ('{}', 'active', 0);
        INSERT INTO rounds(task_id, seq, state, base_version, selected_json, target,
            min_reports, opened_unix, deadline_unix) VALUES
            (1, 0, 'committed', 0, '["d0"]', 1, 1, 0, 1),
            (1, 1, 'open', 1, '["d0"]', 1, 1, 2, 3);
        INSERT INTO updates(round_id, device_id, idempotency_key, frame, accepted_unix) VALUES
            (1, 'd0', 'k', x'0102030405', 0.5), (2, 'd0', 'k2', x'0607', 2.5);
        """
    )
    con.commit()
    con.close()

    # Execute
    store = Store(db)
    before = store.find_update(1, "d0", bytes([1, 2, 3, 4, 5]))
    done = store.prune_frames(1, 0)

    # Assert: migrated in place to the current version, the columns and index there, the rows
    # unpruned until pruned, then the same answers
    columns = {r[1] for r in store._query("PRAGMA table_info(updates)")}
    assert {"pruned_len", "pruned_sha256"} <= columns
    assert store._query("SELECT value FROM meta WHERE key='schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    assert SCHEMA_VERSION == 5
    assert before == ("k", 5, True)
    assert done == PruneResult(1, 5)
    assert store.find_update(1, "d0", bytes([1, 2, 3, 4, 5])) == before
    assert store.updates(2)[0].frame == bytes([6, 7])
    assert store.frame_bytes == 2
    store.close()


def test_a_database_newer_than_version_5_is_still_refused(tmp_path: Path) -> None:
    # Prepare
    db = tmp_path / "plume.db"
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value='6' WHERE key='schema_version'")
    con.commit()
    con.close()
    # Execute / Assert
    with pytest.raises(StoreError, match="schema version '6' is newer than this coordinator's 5"):
        Store(db)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2"])
def test_keep_frames_rounds_must_be_none_or_a_count(bad: Any) -> None:
    with pytest.raises(ValueError, match="keep_frames_rounds"):
        ServiceConfig(keep_frames_rounds=bad)


def test_the_serve_flag_reaches_the_config_and_bad_values_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: `serve` replaced by a recorder
    run, seen = serve_cli(monkeypatch)

    # Execute + Assert: default keeps everything; N and 0 land in the config
    assert run() == 0 and seen[-1].keep_frames_rounds is None
    assert run("--keep-frames", "3") == 0 and seen[-1].keep_frames_rounds == 3
    assert run("--keep-frames", "0") == 0 and seen[-1].keep_frames_rounds == 0
    for bad, why in [
        ("-1", "a number of rounds is >= 0, got -1"),
        ("x", "expected a number of rounds, got 'x'"),
    ]:
        with pytest.raises(SystemExit) as exited:
            run("--keep-frames", bad)
        assert exited.value.code == 2
        assert f"argument --keep-frames: {why}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("--help")
    assert "--keep-frames N" in capsys.readouterr().out


# -- a live coordinator on loopback ------------------------------------------------------------


def _assign(clients: list[Client], task_id: int, timeout: float = 20.0) -> list[Assignment]:
    """Check every client in until each holds an assignment of `task_id`'s next round."""
    got: dict[int, Assignment] = {}
    give_up = time.monotonic() + timeout
    while len(got) < len(clients):
        for i, c in enumerate(clients):
            if i not in got and (a := c.check_in(task_id).assignment) is not None:
                got[i] = a
        assert time.monotonic() < give_up, "no assignment"
        time.sleep(0.02)
    return [got[i] for i in range(len(clients))]


def _signed(client: Client, target: str, round_id: int, body: bytes) -> dict[str, str]:
    headers = auth.sign_request(
        client._core.key, method="POST", target=target, round_id=round_id, body=body,
        timestamp_ms=int(time.time() * 1000),
    )  # fmt: skip
    return {str(k): v for k, v in headers.items()}


def _post_upload(
    http: httpx.Client, client: Client, round_id: int, key: str, frame: bytes
) -> httpx.Response:
    """A device's raw upload (what the SDK sends on a retry)."""
    target = ApiPath.UPLOAD.format(round_id=round_id)
    headers = _signed(client, target, round_id, frame)
    headers.update({"content-type": "application/octet-stream", Header.IDEMPOTENCY_KEY: key})
    return http.post(target, content=frame, headers=headers)


def _outcome(http: httpx.Client, client: Client, round_id: int) -> str:
    body = json.dumps({"awaiting_round": round_id}).encode()
    headers = _signed(client, ApiPath.CHECK_IN, 0, body)
    headers["content-type"] = "application/json"
    r = http.post(ApiPath.CHECK_IN, content=body, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["round_outcome"])


def _db_frames(db: Path, round_id: int | None = None) -> int:
    """sum(length(frame)) of `updates` (of one round if given), read beside the server."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        where, args = ("WHERE round_id=?", (round_id,)) if round_id is not None else ("", ())
        return int(
            con.execute(f"SELECT COALESCE(SUM(length(frame)), 0) FROM updates {where}", args)
            .fetchone()[0]
        )  # fmt: skip


def _until(check: Any, timeout: float = 15.0) -> None:
    give_up = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.02)


def _gauge(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("plume_stored_frame_bytes "):
            return float(line.split()[1])
    raise AssertionError("no plume_stored_frame_bytes in /metrics")


def _round_committed(http: httpx.Client, round_id: int) -> bool:
    return bool(admin_get(http, f"/v1/rounds/{round_id}")["state"] == "committed")


@contextlib.contextmanager
def _server(db: Path, keep: int | None) -> Iterator[httpx.Client]:
    cfg = ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, keep_frames_rounds=keep)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        yield http


def test_pruned_rounds_replay_receipts_refuse_other_bytes_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    # Prepare: keep 1 closed round; A and B (2 per round) run round 1, A's upload by hand so
    # its exact frame and key can be sent again
    db = tmp_path / "plume.db"
    devices: list[Client] = []
    with _server(db, keep=1) as http:
        task_id = create_task(http, task_config(rounds=3, clients_per_round=2, deadline_s=600))
        a, b, c = (Client(str(http.base_url), str(tmp_path / n)) for n in "abc")
        devices = [a, b, c]
        for d in devices:
            d.register()
        a1, b1 = _assign([a, b], task_id)
        params, _ = a.fetch_model(a1)
        pending = a._core.encode(a1, SPEC, params, params + np.float32(0.01), 40)
        first = _post_upload(http, a, a1.round_id, pending.key, pending.frame)
        assert first.status_code == 200, first.text
        b.train_round(b1, SoftmaxTrainer(), *local_data(2))
        r1 = a1.round_id
        _until(lambda: _round_committed(http, r1))
        # A retry while round 1 is still kept: the receipt every later retry must match
        kept = _post_upload(http, a, r1, pending.key, pending.frame)
        assert kept.status_code == 200 and kept.json()["duplicate"] is True
        r1_bytes = _db_frames(db, r1)
        assert r1_bytes > 0 and _db_frames(db) == r1_bytes

        # Execute: round 2 closes, so round 1 (older than the most recent closed one) is pruned
        a2, b2 = _assign([a, b], task_id)
        a.train_round(a2, SoftmaxTrainer(), *local_data(3))
        b.train_round(b2, SoftmaxTrainer(), *local_data(4))
        _until(lambda: _db_frames(db, r1) == 0)
        r2_bytes = _db_frames(db, a2.round_id)

        # Assert: the same receipt, byte for byte; the key with other bytes is a 409; the
        # outcomes unchanged; the DB's frames shrank to round 2's and the gauge says so
        replay = _post_upload(http, a, r1, pending.key, pending.frame)
        assert (replay.status_code, replay.json()) == (200, kept.json())
        assert replay.json()["payload_bytes"] == len(pending.frame)
        other = pending.frame[:-1] + bytes([pending.frame[-1] ^ 1])
        refused = _post_upload(http, a, r1, pending.key, other)
        assert refused.status_code == 409 and refused.json()["reason"] == "duplicate_upload"
        assert "different update" in refused.json()["detail"]
        assert _outcome(http, a, r1) == UploadOutcome.COMMITTED
        assert _db_frames(db) == r2_bytes > 0
        assert _gauge(http) == r2_bytes

        # Round 3: only A uploads, then the coordinator stops with the round open
        a3, _b3 = _assign([a, b], task_id)
        # (C checks in only now: a check-in joins the selection pool of the next round)
        assert _outcome(http, c, r1) == UploadOutcome.EXCLUDED
        a.train_round(a3, SoftmaxTrainer(), *local_data(5))
        r3 = a3.round_id
        r3_bytes = _db_frames(db, r3)
        assert r3_bytes > 0

    # Execute: restart with --keep-frames 0: the start prunes every closed round, not round 3
    with _server(db, keep=0) as http:
        # Assert: round 3's frame is intact and re-decoded (B's upload closes the round into
        # version 3); rounds 1 and 2 are pruned; round 1's receipt is still the same
        assert _db_frames(db, a2.round_id) == 0 and _db_frames(db, r3) == r3_bytes
        replay = _post_upload(http, a, r1, pending.key, pending.frame)
        assert (replay.status_code, replay.json()) == (200, kept.json())
        assert admin_get(http, f"/v1/rounds/{r3}")["reports"] == 1
        b.close()
        b = Client(str(http.base_url), str(tmp_path / "b"))  # the same device, the new port
        devices.append(b)
        b3 = _assign([b], task_id)[0]
        assert b3.round_id == r3
        b.train_round(b3, SoftmaxTrainer(), *local_data(6))
        _until(lambda: _round_committed(http, r3))
        # N=0: the round just committed is pruned too, after its publish
        _until(lambda: _db_frames(db) == 0)
        assert admin_get(http, f"/v1/admin/tasks/{task_id}")["version"] == 3
        assert _outcome(http, b, r3) == UploadOutcome.COMMITTED
        assert _gauge(http) == 0
    for d in devices:
        d.close()


def test_a_failed_prune_is_logged_and_the_rounds_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: every prune fails (a full disk, say), N=0
    def broken(self: Store, task_id: int, keep_rounds: int) -> PruneResult:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "prune_frames", broken)
    db = tmp_path / "plume.db"
    caplog.set_level(logging.ERROR, logger="plume.coordinator")
    with _server(db, keep=0) as http:
        task_id = create_task(http, task_config(rounds=2, clients_per_round=1, deadline_s=600))
        a = Client(str(http.base_url), str(tmp_path / "a"))
        a.register()

        # Execute: two rounds, each followed by a failing prune
        rounds = []
        for seed in (1, 2):
            asg = _assign([a], task_id)[0]
            a.train_round(asg, SoftmaxTrainer(), *local_data(seed))
            rounds.append(asg.round_id)
            _until(lambda rid=asg.round_id: _round_committed(http, rid))
        _until(lambda: "pruning the frames" in caplog.text)

        # Assert: both rounds published (the second round opened after the first's failed
        # prune), nothing pruned, the failure logged with its cause
        assert admin_get(http, f"/v1/admin/tasks/{task_id}")["version"] == 2
        assert all(_db_frames(db, r) > 0 for r in rounds)
        assert "task 1: pruning the frames of its closed rounds failed" in caplog.text
        assert "database or disk is full" in caplog.text
        a.close()


def test_the_default_keeps_every_frame(tmp_path: Path) -> None:
    # Prepare: a coordinator without keep_frames_rounds over a store with closed rounds
    store = Store(tmp_path / "plume.db")
    task_id = _task(store)
    for seq in range(3):
        _round(store, task_id, seq, "committed", {"d0": ("k", b"f" * 10)})
    coordinator = Coordinator(store, ServiceConfig(db_path=str(tmp_path / "plume.db")))

    # Execute
    coordinator.prune_frames(task_id)

    # Assert: nothing pruned; with keep_frames_rounds=2, the oldest round only
    assert _frame_sum(store) == 30
    Coordinator(store, ServiceConfig(keep_frames_rounds=2)).prune_frames(task_id)
    assert _frame_sum(store) == 20
    store.close()


def _vacuumed_size(rows: int, tmp: Path) -> int:
    """File size after `rows` 2 kB uploads of one round were accepted, committed, pruned and
    the file VACUUMed with the coordinator stopped (docs/operations.md's command)."""
    db = tmp / f"{rows}.db"
    store = Store(db)
    task_id = _task(store)
    devices = [hashlib.sha256(str(i).encode()).digest()[:16].hex() for i in range(rows)]
    ups = {d: (hashlib.sha256(d.encode()).hexdigest()[:32], d.encode() * 64) for d in devices}
    _round(store, task_id, 0, "committed", ups)
    full = db.stat().st_size + Path(f"{db}-wal").stat().st_size
    assert store.prune_frames(task_id, 0).frames == rows
    store.close()
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("VACUUM")
    assert db.stat().st_size < full
    return db.stat().st_size


def test_a_pruned_upload_costs_under_250_bytes_once_vacuumed(tmp_path: Path) -> None:
    # Execute: the same round with 500 and 1,500 uploads
    small, large = _vacuumed_size(500, tmp_path), _vacuumed_size(1500, tmp_path)

    # Assert: what each further upload leaves (its row, index entry, digest and the round's
    # selection) is bounded, whatever its frame's size was (docs/operations.md quotes this)
    per_upload = (large - small) / 1000
    assert 100 < per_upload < 250, per_upload
