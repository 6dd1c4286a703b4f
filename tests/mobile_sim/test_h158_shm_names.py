"""The pool tests' leak check (`_shm_names() - before == set()`) counts only the shared-memory
segments this process created: /dev/shm is the machine's, and another process's segments,
made while a pool test ran, failed test_pool_matches_the_sequential_backend_over_rounds_then_
fails_cleanly (helper-158: "Extra items in the left set: 'psm_9e0f14c8', 'psm_ba9f98af'")."""

from __future__ import annotations

import os
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import pytest

from tests.mobile_sim.test_backends_pool import _shm_names

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="Linux shared memory")


def test_another_processs_segment_is_not_counted_as_a_leak(tmp_path: Path) -> None:
    # Prepare: a segment another process makes while a test runs (a tmpfs file, as its
    # SharedMemory makes it; its name from this test's own random part)
    before = _shm_names()
    foreign = Path("/dev/shm") / f"psm_h158_{os.getpid()}_{tmp_path.name[-8:]}"

    # Execute
    foreign.write_bytes(b"\0" * 8)
    try:
        seen = _shm_names() - before
    finally:
        foreign.unlink()

    # Assert
    assert seen == set()


def test_a_segment_this_process_leaves_is_counted() -> None:
    # Prepare
    before = _shm_names()
    block = SharedMemory(create=True, size=8)

    # Execute / Assert: counted while it exists, gone once unlinked
    try:
        assert _shm_names() - before == {block.name}
    finally:
        block.close()
        block.unlink()
    assert _shm_names() - before == set()
