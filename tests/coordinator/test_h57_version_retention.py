"""`--keep-frames` also bounds the `versions` table: the downlink delta frames of versions no
model download can reach any more (older than the task's `max_chain` window, and older than
the N rounds kept) are emptied, their rows and digests kept. A device further behind gets the
snapshot, as it did before; a chain with a frame missing is never served."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from compression import UpdateCodec, encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service import store as store_module
from coordinator.service.errors import ApiError
from coordinator.service.rounds import Coordinator
from protocol.messages import TaskConfig
from protocol.names import ModelEncoding
from tests._clock import Clock

from .test_service_support import SPEC, initial_params, task_config

T0 = 1_800_000_000.0
ROUNDS = 5


def _frame(cfg: TaskConfig, seed: int) -> bytes:
    u = np.random.default_rng(seed).normal(0, 0.01, SPEC.size).astype(np.float32)
    frame, _ = UpdateCodec(SPEC, cfg.codec.to_config()).encode(
        u, np.random.default_rng(seed + 100), weight=10.0
    )
    return frame


def _start(db: Path, keep: int | None) -> Coordinator:
    coord = Coordinator(
        Store(db), ServiceConfig(db_path=str(db), keep_frames_rounds=keep), clock=Clock(T0)
    )
    coord.restore()
    return coord


def _run(db: Path, keep: int | None, max_chain: int = 2, rounds: int = ROUNDS) -> Coordinator:
    """A one-device task (max_chain as given) run for `rounds` committed rounds."""
    cfg = task_config(rounds=rounds, clients_per_round=1, max_chain=max_chain)
    coord = _start(db, keep)
    task_id = coord.create_task(cfg)
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    for r in range(rounds):
        answer = coord.check_in("a", task_id)
        assert answer.assignment is not None
        _, to_close = coord.submit(answer.assignment.round_id, "a", f"k{r}", _frame(cfg, r))
        assert to_close is not None
        asyncio.run(coord.close_round(to_close))
    assert coord.runtimes[task_id].version == rounds
    return coord


def _frames(db: Path) -> dict[int, int | None]:
    """version -> its stored delta frame's length (None: no frame)."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT version, length(delta_frame) FROM versions ORDER BY version")
    out = {int(v): (None if n is None else int(n)) for v, n in rows}
    con.close()
    return out


def test_the_default_keeps_every_version_frame(tmp_path: Path) -> None:
    _run(tmp_path / "p.db", None).store.close()
    frames = _frames(tmp_path / "p.db")
    assert frames[0] is None and all(frames[v] for v in range(1, ROUNDS + 1))


@pytest.mark.parametrize(("keep", "kept"), [(0, {4, 5}), (2, {4, 5}), (3, {3, 4, 5})])
def test_keep_frames_empties_the_versions_outside_the_chain_window_and_the_kept_rounds(
    tmp_path: Path, keep: int, kept: set[int]
) -> None:
    # Prepare: the same rounds with every frame kept, for reference
    reference = _run(tmp_path / "ref.db", None)
    # Execute
    pruned = _run(tmp_path / "p.db", keep)
    # Assert: frames of the newest max(keep, max_chain=2) versions stay, the rest are empty,
    # every row (and its digest) stays
    frames = _frames(tmp_path / "p.db")
    assert sorted(frames) == list(range(ROUNDS + 1))
    assert {v for v, n in frames.items() if n} == kept
    for v in range(ROUNDS + 1):
        assert pruned.store.version_digest(1, v) == reference.store.version_digest(1, v)
    # ... and every download answers as with every frame kept: a chain within max_chain,
    # the snapshot from further behind
    for have in [None, 0, 1, 2, 3, 4, 5]:
        body, headers, _ = pruned.model(1, have, "auto", "fp32")
        want, want_headers, _ = reference.model(1, have, "auto", "fp32")
        assert (body, headers) == (want, want_headers), have
    body, headers, _ = pruned.model(1, 3, "delta", "fp32")
    assert headers["x-plume-model-encoding"] == ModelEncoding.DELTA_CHAIN
    assert body == reference.model(1, 3, "delta", "fp32")[0]
    with pytest.raises(ApiError) as refused:
        pruned.model(1, 2, "delta", "fp32")
    assert refused.value.status == 409 and refused.value.reason == "unknown_version"


def test_a_start_with_keep_frames_empties_the_backlog_of_versions(tmp_path: Path) -> None:
    # Prepare: a task run without the option
    db = tmp_path / "p.db"
    _run(db, None).store.close()
    # Execute: started again with it
    _start(db, 0).store.close()
    # Assert
    assert {v for v, n in _frames(db).items() if n} == {4, 5}


def test_a_chain_with_a_missing_frame_is_never_served(tmp_path: Path) -> None:
    # Prepare: max_chain 4, but version 3's frame is gone (emptied by a coordinator with a
    # smaller window, or by hand): a chain from 1 or 2 cannot be built
    db = tmp_path / "p.db"
    coord = _run(db, None, max_chain=4)
    with coord.store.transaction() as tx:
        tx.execute("UPDATE versions SET delta_frame=NULL WHERE version=3")
    snapshot = coord.model(1, None, "snapshot", "fp32")[0]
    for have in (1, 2):
        # Execute
        body, headers, _ = coord.model(1, have, "auto", "fp32")
        # Assert: the snapshot, not a chain that skips a version
        assert headers["x-plume-model-encoding"] == ModelEncoding.SNAPSHOT and body == snapshot
        with pytest.raises(ApiError) as refused:
            coord.model(1, have, "delta", "fp32")
        assert refused.value.status == 409 and refused.value.reason == "unknown_version"
    # ... while a chain after the gap is still served
    assert (
        coord.model(1, 3, "delta", "fp32")[1]["x-plume-model-encoding"] == ModelEncoding.DELTA_CHAIN
    )


def test_each_close_searches_only_the_versions_it_has_not_pruned(tmp_path: Path) -> None:
    # After the start's full pass, a close looks at the versions past what was emptied, not at
    # the whole history (a scan under the store lock that would grow with every round).
    coord = _run(tmp_path / "p.db", 0)
    calls: list[tuple[int, int]] = []
    real = coord.store.prune_versions

    def spy(task_id: int, up_to: int, after: int = 0) -> store_module.PruneResult:
        calls.append((up_to, after))
        return real(task_id, up_to, after)

    coord.store.prune_versions = spy  # type: ignore[method-assign]
    coord.prune_frames(1)
    assert calls == [(ROUNDS - 2, ROUNDS - 2)]  # nothing new: an empty range
    store = Store(tmp_path / "p.db")
    assert store.prune_versions(1, ROUNDS, after=ROUNDS - 2).frames == 2  # the rest, by range
    store.close()
