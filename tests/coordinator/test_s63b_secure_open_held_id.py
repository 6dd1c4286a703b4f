"""The secure registry's refusal of a round id it still holds (`SecureRegistry.open_round`,
ValueError) cannot meet the service's open (rounds.py `_maybe_open`), and if it did, the
service would abandon only the round that open had just stored.

Why it cannot: `_maybe_open` opens only while its task has no round in flight (`rt.current is
None`), and names the secure round by the id `Store.open_round` just inserted, which the
rounds table's AUTOINCREMENT never hands out twice (rounds are never deleted, and a deleted
row's id is not reused either); the registry of a task's runtime holds only ids opened there,
each discarded at its round's close (`finish_close`), and a rebuilt runtime starts a new one.
These tests pin the two halves: the store never repeats a round id, and the refusal, forced by
opening the next id in the registry first, abandons that new row and touches nothing else."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from coordinator.service.store import Store

from ._secure_inproc import secure_coordinator


def test_the_store_never_hands_out_a_round_id_twice(tmp_path: Path) -> None:
    # Prepare: round 2, the newest, deleted behind the store's back
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    first = store.open_round(task_id, 1, 0, ["a"], 1, 1, 1.0, 2.0)
    second = store.open_round(task_id, 2, 0, ["a"], 1, 1, 1.0, 2.0)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM rounds WHERE round_id=?", (second,))
    conn.close()
    # Execute / Assert: the next round takes a new id, not the deleted one's
    third = store.open_round(task_id, 3, 0, ["a"], 1, 1, 1.0, 2.0)
    assert (first, second, third) == (1, 2, 3)
    store.close()


def test_a_held_id_refused_at_open_abandons_only_the_round_just_stored(tmp_path: Path) -> None:
    # Prepare: a secure task of 3 devices whose registry already holds round 1, the id the
    # store hands out next (no service path does this: the test forces the refusal)
    coord, task_id = secure_coordinator(tmp_path, clients=3, min_reports=3)
    rt = coord.runtimes[task_id]
    assert rt.secure is not None and rt.current is None
    held = rt.secure.registry.open_round(["x", "y", "z"], 1, 3)
    # Execute: three check-ins open a round
    for d in ("a", "b", "c"):
        coord.check_in(d, task_id)
    # Assert: the round the store just stored is abandoned with the refusal; no round is in
    # flight; the registry's own round 1 is left as it was
    row = coord.store.round(1)
    assert row is not None and (row.task_id, row.state) == (task_id, "abandoned")
    assert "secure round 1 is already open" in row.measurements["error"]
    assert rt.current is None and rt.rounds_closed == 1
    assert rt.secure.registry.has_round(1) and rt.secure.registry.plans(1)
    assert held.round_id == 1
    # Once the registry lets its round go, the next open takes a new id and runs
    rt.secure.registry.discard(1)
    for d in ("a", "b", "c"):
        coord.check_in(d, task_id)
    assert rt.current is not None and rt.current.round_id == 2
    assert coord.store.round_state(2) == (task_id, "open")
    coord.store.close()
