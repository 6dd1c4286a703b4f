"""The store keeps each task's initial model (schema 4), so the admin export serves any older
version N whose delta chain from version 0 is whole as a full fp32 snapshot (`GET
/v1/admin/tasks/{id}/model?version=N`), rebuilt on the coordinator and checked against the
stored digest; `AdminClient.model` and `plume coordinator get-model --version N` use it, so
`--initial` is needed only for a task stored before schema 4. A database of schema 3 migrates
in place, and its tasks keep the answers they had."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import decode_snapshot, encode_snapshot, model_digest
from coordinator.service import AdminClient, AdminError, ServerThread, ServiceConfig, admin_client
from coordinator.service import rounds as rounds_module
from coordinator.service import store as store_module
from coordinator.service.store import SCHEMA_VERSION, Store
from protocol.messages import unpack_chain

from .test_h79_admin_model import World, _cli_run, _history, _train
from .test_service_support import (
    ADMIN,
    SPEC,
    create_task,
    initial_params,
    task_config,
    wait_until,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}

# The `versions` table as schema 3 created it (coordinator/service/store.py before schema 4).
_V3_VERSIONS = [
    ("task_id", "INTEGER"),
    ("version", "INTEGER"),
    ("round_id", "INTEGER"),
    ("delta_frame", "BLOB"),
    ("digest", "TEXT"),
    ("created_unix", "REAL"),
]
# What a schema-3 task's older version answered, and still answers (rounds.export_model).
_KEPT_ONLY_CURRENT = "and the store keeps only the current model"


def _config(db: Path, **over: object) -> ServiceConfig:
    return ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02, **over)  # type: ignore[arg-type]


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    with (
        ServerThread(_config(tmp_path / "plume.db")) as url,
        httpx.Client(base_url=url) as http,
    ):
        yield World(url, tmp_path, http)


def _get(world: World, task_id: int, **params: int) -> httpx.Response:
    return world.http.get(f"/v1/admin/tasks/{task_id}/model", params=params, headers=AUTH)


def _detail(r: httpx.Response) -> str:
    body = r.json()
    assert r.status_code == 410 and body["reason"] == "version_gone", r.text
    return str(body["detail"])


# -- serving an older version ---------------------------------------------------------------


def test_every_older_version_is_served_as_the_model_the_devices_held(world: World) -> None:
    # Prepare: four committed rounds, each version as a device fetched it
    task_id, held = _history(world, 4)
    current = world.http.get(f"/v1/admin/tasks/{task_id}/model", headers=AUTH)
    # Execute
    answers = {v: _get(world, task_id, version=v) for v in range(5)}
    with AdminClient(world.url, ADMIN) as admin:
        exported = {v: admin.model(task_id, v) for v in range(5)}
    # Assert: a checked fp32 snapshot of version v, bit for bit the device's model at v
    for v, r in answers.items():
        assert r.status_code == 200, (v, r.text)
        assert r.headers["x-plume-model-version"] == str(v)
        assert r.headers["x-plume-model-digest"] == model_digest(held[v]).hex()
        assert r.headers["x-plume-model-encoding"] == "snapshot"
        assert r.headers["x-plume-model-exact"] == "1"
        assert r.content == encode_snapshot(held[v], SPEC, "fp32")
        assert np.array_equal(decode_snapshot(r.content, SPEC), held[v])
        assert exported[v].version == v and np.array_equal(exported[v].params, held[v])
    # ... the current version's answer is the one it always was
    assert answers[4].content == current.content
    assert answers[4].headers["x-plume-model-digest"] == current.headers["x-plume-model-digest"]


def test_the_existing_answers_are_unchanged(world: World) -> None:
    # Prepare
    task_id, held = _history(world, 3)
    # Execute
    snapshot = _get(world, task_id)
    chain = _get(world, task_id, version=3, base=1)
    beyond = _get(world, task_id, version=4)
    # Assert: the current snapshot, a delta chain and the unknown version as before
    assert snapshot.content == encode_snapshot(held[3], SPEC, "fp32")
    assert chain.headers["x-plume-model-encoding"] == "delta-chain"
    assert len(unpack_chain(chain.content, max_frames=2, max_frame_bytes=1 << 20)) == 2
    assert beyond.status_code == 404 and beyond.json()["reason"] == "unknown_version"


def test_a_rebuilt_version_whose_digest_differs_is_refused_naming_the_damage(
    world: World,
) -> None:
    # Prepare: three versions; version 2's stored frame replaced by version 1's (a frame that
    # decodes, but not to version 2), then the initial model damaged
    task_id, held = _history(world, 3)
    con = sqlite3.connect(world.root / "plume.db")
    con.execute(
        "UPDATE versions SET delta_frame=(SELECT delta_frame FROM versions WHERE task_id=? "
        "AND version=1) WHERE task_id=? AND version=2",
        (task_id, task_id),
    )
    con.commit()
    # Execute / Assert: version 1 still serves; version 2 is refused, its digest named
    assert _get(world, task_id, version=1).status_code == 200
    detail = _detail(_get(world, task_id, version=2))
    assert "version 2" in detail and model_digest(held[2]).hex() in detail
    assert "damaged" in detail
    # ... a frame that does not decode is named
    con.execute(
        "UPDATE versions SET delta_frame=x'00010203' WHERE task_id=? AND version=1", (task_id,)
    )
    con.commit()
    detail = _detail(_get(world, task_id, version=1))
    assert "delta frame of version 1" in detail and "does not decode" in detail
    # ... and an initial model that is not version 0 is caught before any frame is applied
    wrong = (initial_params() + np.float32(1e-3)).astype("<f4").tobytes()
    con.execute("UPDATE versions SET params=? WHERE task_id=? AND version=0", (wrong, task_id))
    con.commit()
    con.close()
    for v in (0, 1):
        detail = _detail(_get(world, task_id, version=v))
        assert "initial model" in detail and "version 0's digest" in detail
    # ... the current version is still served, from memory
    assert _get(world, task_id, version=3).status_code == 200


def test_pruned_frames_give_a_410_naming_the_version_and_keep_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: every frame but the newest emptied (--keep-frames 0, max_chain 1)
    cfg = _config(tmp_path / "k.db", keep_frames_rounds=0)
    with (
        ServerThread(cfg) as url,
        httpx.Client(base_url=url) as http,
    ):
        world = World(url, tmp_path, http)
        task_id, held = _history(world, 3, max_chain=1)
        # Execute
        gone = _get(world, task_id, version=2)
        version_0 = _get(world, task_id, version=0)
        with AdminClient(url, ADMIN) as admin, pytest.raises(AdminError) as raised:
            admin.model(task_id, 2)
        # ... past the cap too, the client's error is version 2's own (not the cap's)
        monkeypatch.setattr(rounds_module, "MAX_EXPORT_CHAIN", 1)
        monkeypatch.setattr(admin_client, "EXPORT_REACH", 1)
        with AdminClient(url, ADMIN) as admin, pytest.raises(AdminError) as past_cap:
            admin.model(task_id, 2)
        monkeypatch.undo()
        flags = ["--url", url, "--admin-token", ADMIN, "--task", str(task_id)]
        out = tmp_path / "v2.npz"
        capsys.readouterr()
        with pytest.raises(SystemExit):
            _cli_run("get-model", *flags, "--out", str(out), "--version", "2")
        told = capsys.readouterr().err
    # Assert: the first emptied frame on the way is named, with why; version 0 needs none
    detail = _detail(gone)
    assert "delta frame of version 1 is no longer stored" in detail
    assert "--keep-frames" in detail
    assert raised.value.status == 410 and "--keep-frames" in raised.value.body
    assert past_cap.value.body == raised.value.body
    assert version_0.status_code == 200
    assert np.array_equal(decode_snapshot(version_0.content, SPEC), held[0])
    assert not out.exists()
    assert "delta frame of version 1 is no longer stored" in told and "--initial" not in told


def test_past_the_chain_cap_the_client_asks_for_the_cap_then_the_chain(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the cap (1,024 versions) lowered to 2 on both sides
    monkeypatch.setattr(rounds_module, "MAX_EXPORT_CHAIN", 2)
    monkeypatch.setattr(admin_client, "EXPORT_REACH", 2)
    task_id, held = _history(world, 4)
    # Execute
    refused = _get(world, task_id, version=3)
    with AdminClient(world.url, ADMIN) as admin:
        got = {v: admin.model(task_id, v) for v in (2, 3)}
    # Assert: version 3 is more than 2 versions from version 0: the coordinator says so and
    # how to ask; the client does that (version 2's snapshot, then the chain 2 -> 3)
    detail = _detail(refused)
    assert "at most 2" in detail and "?version=2" in detail and "base=2" in detail
    for v, exported in got.items():
        assert np.array_equal(exported.params, held[v]) and exported.version == v
        assert exported.digest == model_digest(held[v]).hex()


def test_the_client_reach_is_the_coordinator_cap() -> None:
    assert admin_client.EXPORT_REACH == rounds_module.MAX_EXPORT_CHAIN == 1024


def test_get_model_exports_an_older_version_without_initial(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a task outside the zoo (no weights to remake) at version 2
    task_id, held = _history(world, 2)
    flags = ["--url", world.url, "--admin-token", ADMIN, "--task", str(task_id)]
    capsys.readouterr()
    for v in (0, 1):
        out = world.root / f"v{v}.snap"
        # Execute
        assert _cli_run("get-model", *flags, "--out", str(out), "--version", str(v)) == 0
        # Assert
        printed = json.loads(capsys.readouterr().out)
        assert printed["version"] == v and printed["digest"] == model_digest(held[v]).hex()
        assert np.array_equal(decode_snapshot(out.read_bytes(), SPEC), held[v])


# -- migration of a schema-3 database --------------------------------------------------------


def _as_schema_3(db: Path) -> None:
    """Turn a stopped coordinator's database into the one schema 3 wrote for the same run:
    schema 4 only added `versions.params` (the last column), written for version 0."""
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE versions DROP COLUMN params")
    con.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    con.commit()
    columns = [(r[1], r[2]) for r in con.execute("PRAGMA table_info(versions)")]
    con.close()
    assert columns == _V3_VERSIONS


def test_a_schema_3_database_migrates_and_its_tasks_keep_their_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a task run to version 2 with the device's models recorded, its database
    # turned into schema 3's, and the answers it gave
    db = tmp_path / "plume.db"
    with (
        ServerThread(_config(db)) as url,
        httpx.Client(base_url=url) as http,
    ):
        world = World(url, tmp_path, http)
        old, held = _history(world, 2)
    _as_schema_3(db)
    with (
        ServerThread(_config(db)) as url,
        httpx.Client(base_url=url) as http,
    ):
        world = World(url, tmp_path, http)
        # Execute: the old task's versions; then a new task in the migrated database
        gone = _get(world, old, version=1)
        current = _get(world, old, version=2)
        chain = _get(world, old, version=2, base=0)
        new = create_task(http, task_config(rounds=3, clients_per_round=2, deadline_s=60.0))
        _train(world.devices(2, "n"), new, 0)
        wait_until(http, f"/v1/admin/tasks/{new}", "version", 1)
        new_v0 = _get(world, new, version=0)
        flags = ["--url", url, "--admin-token", ADMIN, "--task", str(old)]
        out = tmp_path / "old-v1.snap"
        with pytest.raises(SystemExit):
            _cli_run("get-model", *flags, "--out", str(out), "--version", "1")
        told = capsys.readouterr().err
        v0 = tmp_path / "v0.snap"
        v0.write_bytes(encode_snapshot(initial_params(), SPEC, "fp32"))
        code = _cli_run(
            "get-model", *flags, "--out", str(out), "--version", "1", "--initial", str(v0)
        )
    # Assert: migrated in place to the current schema (4 added versions.params)
    store = Store(db)
    assert store._query("SELECT value FROM meta WHERE key='schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    assert SCHEMA_VERSION == 5
    assert "params" in {r[1] for r in store._query("PRAGMA table_info(versions)")}
    assert store.initial_params(old) is None
    assert store.initial_params(new) == initial_params().astype("<f4").tobytes()
    store.close()
    # ... the old task keeps today's answers: 410 naming the missing initial model, the
    # current snapshot and the delta chain from version 0, and get-model's rebuild from
    # --initial (only that: the zoo cannot make a softmax task's weights)
    assert _KEPT_ONLY_CURRENT in _detail(gone)
    assert current.status_code == 200 and chain.status_code == 200
    assert "--initial FILE" in told
    assert code == 0 and np.array_equal(decode_snapshot(out.read_bytes(), SPEC), held[1])
    # ... and the new task's version 0 is served from what the store now keeps
    assert new_v0.status_code == 200
    assert np.array_equal(decode_snapshot(new_v0.content, SPEC), initial_params())


def test_a_new_store_keeps_version_0_beside_the_current_params(tmp_path: Path) -> None:
    # Prepare
    store = Store(tmp_path / "s.db")
    task_id = store.create_task({}, "awaiting_model", 0.0)
    params = np.arange(6, dtype=np.float32)
    # Execute
    store.set_initial_model(task_id, params.astype("<f4").tobytes(), "d0", "active", 1.0)
    kept = store.initial_params(task_id)
    # Assert: kept with version 0's row; a task without a model has none
    assert kept is not None
    got: npt.NDArray[np.float32] = np.frombuffer(kept, dtype="<f4")
    assert np.array_equal(got, params)
    assert store.initial_params(task_id + 1) is None
    assert store.version_digest(task_id, 0) == "d0"
    store.close()


# Each version 1..n: 0 its row missing, 1 its frame emptied, 2 its frame stored.
_ROWS = st.lists(st.integers(0, 2), max_size=12)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(rows=_ROWS, page=st.integers(1, 4))
def test_first_missing_frame_is_the_first_version_without_a_frame(
    rows: list[int], page: int
) -> None:
    # Prepare: a task's version rows as given, read `page` versions a query
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "s.db")
        task_id = store.create_task({}, "active", 0.0)
        with store.transaction() as db:
            db.execute(
                "INSERT INTO versions(task_id, version, digest, created_unix) VALUES (?, 0, "
                "'d', 0)",
                (task_id,),
            )
            for v, kind in enumerate(rows, start=1):
                if kind:
                    db.execute(
                        "INSERT INTO versions(task_id, version, delta_frame, digest, "
                        "created_unix) VALUES (?, ?, ?, 'd', 0)",
                        (task_id, v, b"f" if kind == 2 else None),
                    )
        stored = {v for v, kind in enumerate(rows, start=1) if kind == 2}
        old_page = store_module._VERSION_PAGE
        store_module._VERSION_PAGE = page
        try:
            # Execute
            got = [store.first_missing_frame(task_id, up) for up in range(len(rows) + 3)]
        finally:
            store_module._VERSION_PAGE = old_page
            store.close()
    # Assert: the first version of 1..up without a stored frame (past the last row: missing)
    want = [
        next((v for v in range(1, up + 1) if v not in stored), None) for up in range(len(rows) + 3)
    ]
    assert got == want
