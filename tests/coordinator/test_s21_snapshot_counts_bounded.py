"""The per-device snapshot counts (906ab87) hold about one window's devices: before, a version
served for long kept an entry for every device that ever fetched a snapshot of it (helper-205's
review), growing with the fleet."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from coordinator.service import ServiceConfig
from coordinator.service.rounds import SNAPSHOT_WINDOW_S, Coordinator
from coordinator.service.store import Store


def test_devices_past_their_window_are_dropped(tmp_path: Path) -> None:
    # Prepare: one task at one version; a clock the test moves
    now = [1_000_000.0]
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token="a" * 32)
    store = Store(cfg.db_path)
    coord = Coordinator(store, cfg, clock=lambda: now[0])
    rt = SimpleNamespace(task_id=1, version=3)
    try:
        # Execute: 3,000 devices fetch one snapshot each; then, a window later, 3,000 others
        for i in range(3_000):
            coord._count_snapshot(rt, f"old-{i}")  # type: ignore[arg-type]
        now[0] += SNAPSHOT_WINDOW_S + 1
        for i in range(3_000):
            coord._count_snapshot(rt, f"new-{i}")  # type: ignore[arg-type]
        counts = coord._snapshot_counts[1][1]
        # Assert: the first window's devices are gone (before: all 6,000 held)
        assert len(counts) < 4_000
        assert all(dev.startswith("new-") for dev in list(counts)[-3_000:])
        # and the limit still counts within a window
        for _ in range(cfg.snapshots_per_version - 1):
            coord._count_snapshot(rt, "new-0")  # type: ignore[arg-type]
        assert counts["new-0"][1] == cfg.snapshots_per_version
    finally:
        store.close()
