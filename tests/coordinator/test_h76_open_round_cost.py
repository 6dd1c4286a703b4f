"""Opening a grouped secure round packs S_r once, and its groups share the packed bytes.

Each group's plan zstd-compressed the round's S_r again and kept its own copy of the plan
bytes: a cohort of 30,000 in groups of 3 spent 6.7 s of the event loop on it and kept 10,000
copies (scratch measurement, 2-core dev machine, 2026-11-29). Counted here, not timed: the
compressions, and the memory the open round keeps per group (tracemalloc).
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator, make_plan
from protocol.secagg import _plan

D = 1_000_000  # |S_r| = 1.25% of d = 12,500 coordinates


class _Counting:
    """zstandard.ZstdCompressor that counts compress calls (shared by every instance)."""

    calls = 0

    def __init__(self, real: Any, *args: Any, **kwargs: Any) -> None:
        self._inner = real(*args, **kwargs)

    def compress(self, data: bytes) -> bytes:
        type(self).calls += 1
        return bytes(self._inner.compress(data))


@pytest.fixture()
def compressions(monkeypatch: pytest.MonkeyPatch) -> type[_Counting]:
    real = _plan.zstandard.ZstdCompressor
    _Counting.calls = 0
    monkeypatch.setattr(
        _plan.zstandard, "ZstdCompressor", lambda *a, **kw: _Counting(real, *a, **kw)
    )
    return _Counting


def _coordinator(group_size: int = 3, seed: int = 3) -> SecureCoordinator:
    config = SecureConfig(coord_fraction=0.0125, group_size=group_size, seed=seed)
    return SecureCoordinator(np.zeros(D, np.float32), config)


def test_a_round_of_100_groups_compresses_s_r_once(compressions: type[_Counting]) -> None:
    # Prepare
    coord = _coordinator()
    ids = [f"dev-{i:04d}" for i in range(301)]  # 100 groups, the last of 4
    # Execute
    task = coord.open_round(ids, 5)
    # Assert
    assert len(task.groups) == 100 and task.groups[-1].plan.num_nodes == 4
    assert compressions.calls == 1


def test_every_group_plan_is_byte_for_byte_the_unshared_one() -> None:
    # Prepare: groups of 3 and 5, the last with the remainder
    for group_size, n in [(3, 301), (5, 23)]:
        coord = _coordinator(group_size, seed=group_size)
        task = coord.open_round([f"d{i}" for i in range(n)], 7)
        segs = coord.sketch_segments
        for g, sr in enumerate(task.groups):
            # Execute: the plan built alone, over a copy of S_r (nothing to share)
            alone = make_plan(coord.config, 7, sr.plan.num_nodes, D, task.indices.copy(), segs, g)
            # Assert
            assert sr.plan_bytes == alone.to_bytes()
            assert sr.digest == alone.protocol_params(sr.model_digest).digest
            assert sr.plan.indices is task.groups[0].plan.indices


def test_the_open_round_keeps_one_copy_of_the_packed_s_r() -> None:
    # Prepare
    coord = _coordinator()
    ids = [f"dev-{i:04d}" for i in range(300)]  # 100 groups
    coord.open_round(ids[:3], 1)  # warm up imports and caches outside the measurement
    # Execute
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        task = coord.open_round(ids, 2)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Assert: each group used to keep its ~16.7 KB of plan bytes (1.7 MB in all); the packed
    # S_r is now kept once, and a group's own state is a few KB
    packed = len(task.groups[0].plan.to_bytes())
    assert packed > 15_000
    assert kept < 100 * packed / 3, (kept, packed)
