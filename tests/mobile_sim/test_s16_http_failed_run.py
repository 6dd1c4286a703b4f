"""A `plume sim --transport http` run against an external coordinator that fails (not a Ctrl-C)
stops its task there: with the run's fleet gone, the task would wait for check-ins for ever."""

from __future__ import annotations

from typing import Any

import pytest

import sdk.trainer
from coordinator.service.admin_client import AdminClient
from mobile_sim.http_fleet import HttpFleetOptions, run_http_simulation

from .test_h112_http_interrupted import CFG, server  # noqa: F401


@pytest.mark.timeout(60)
def test_a_failed_run_stops_its_task_on_an_external_coordinator(
    monkeypatch: pytest.MonkeyPatch,
    server: tuple[str, str],  # noqa: F811
) -> None:
    # Prepare: the run fails while round 1 is evaluated (a bug in an evaluation, say)
    url, token = server

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(sdk.trainer, "evaluate", evaluate)

    # Execute
    with pytest.raises(RuntimeError, match="evaluation broke"):
        run_http_simulation(
            CFG, coordinator_url=url, progress=False, options=HttpFleetOptions(admin_token=token)
        )

    # Assert: the error is the run's, and its task is stopped on the coordinator
    with AdminClient(url, token) as admin:
        assert admin.status(1).state == "stopped"
