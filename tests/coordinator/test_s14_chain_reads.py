"""A model export's delta chain (and a device's chain download) read every frame after its base
up to the task's latest version, then dropped those past the version asked for: rebuilding
version V of a task now at version N read about (V / 256) x N frames over the admin client's
steps (helper-88's review). `Store.chain` takes an upper bound, and only the chain's own rows
are read."""

from __future__ import annotations

from pathlib import Path

from coordinator.service import Store
from protocol.names import TaskState


def _store_with_versions(path: Path, versions: int) -> tuple[Store, int]:
    store = Store(str(path))
    task = store.create_task({"name": "t"}, TaskState.ACTIVE, 0.0)
    with store.transaction() as db:
        db.executemany(
            "INSERT INTO versions(task_id, version, digest, delta_frame, created_unix) "
            "VALUES (?, ?, ?, ?, 0)",
            [(task, v, f"d{v}", bytes([v % 256])) for v in range(versions + 1)],
        )
    return store, task


def test_chain_reads_only_up_to_the_version_asked_for(tmp_path: Path) -> None:
    store, task = _store_with_versions(tmp_path / "p.db", 40)
    assert [v for v, _ in store.chain(task, 10, 15)] == [11, 12, 13, 14, 15]
    assert [v for v, _ in store.chain(task, 38)] == [39, 40]  # no bound: to the latest
    store.close()


def test_the_coordinators_chains_pass_their_bound(tmp_path: Path) -> None:
    # The export and the device download both go through `_chain_frames`, which asks the
    # store for exactly the versions on the way.
    from coordinator.service.rounds import Coordinator

    calls: list[tuple[int, int, int | None]] = []
    store, task = _store_with_versions(tmp_path / "p.db", 40)

    class Recording:
        def chain(self, task_id: int, after: int, up_to: int | None = None) -> object:
            calls.append((task_id, after, up_to))
            return store.chain(task_id, after, up_to)

    fake = object.__new__(Coordinator)
    fake.store = Recording()  # type: ignore[assignment]
    frames, gone = Coordinator._chain_frames(fake, task, 10, 15)
    assert calls == [(task, 10, 15)]
    assert (len(frames), gone) == (5, None)
    store.close()
