"""`wait_until` (test_service_support) fails when the state it waits for does not come, rather
than handing back whatever it last read: callers that do not check the body went on as if
the round had committed or the task had finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.coordinator.test_service_support import task_server, wait_until


def test_a_state_that_never_comes_fails_with_the_last_body(tmp_path: Path) -> None:
    # Prepare: a served task with an initial model and no devices, so version 1 never comes.
    with task_server(tmp_path) as http:
        # Execute / Assert: it fails naming the path, the key, the value and what it read.
        with pytest.raises(
            AssertionError, match=r"/v1/admin/tasks/1: version is not 1 after"
        ) as info:
            wait_until(http, "/v1/admin/tasks/1", "version", 1, timeout=0.2)
        assert "'version': 0" in str(info.value)
        # A state already reached is returned at once.
        assert wait_until(http, "/v1/admin/tasks/1", "version", 0, timeout=0.2)["version"] == 0
