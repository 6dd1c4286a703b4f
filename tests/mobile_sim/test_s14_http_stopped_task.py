"""An HTTP fleet run whose task the operator stops (`plume coordinator stop`) ends with the
rounds it ran. Before, the run's monitor waited for the state `done` only, and the devices'
check-ins, refused 409 `task_refused`, ended them with `DeviceFailed`."""

from __future__ import annotations

import os
import tempfile

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.admin_client import AdminClient
from mobile_sim.http_fleet import HttpFleetOptions, run_http_simulation
from mobile_sim.runner import RoundRecord, SimConfig


def test_a_run_whose_task_is_stopped_ends_with_the_rounds_it_ran() -> None:
    # Prepare: a loopback coordinator of our own, so that the test can stop the task
    cfg = SimConfig(dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=5,
                    topk=0.1, bits=8, local_epochs=1, batch_size=16, partition="iid",
                    seed=0)  # fmt: skip
    token = "s14-token"
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerThread(
            ServiceConfig(db_path=os.path.join(tmp, "c.db"), admin_token=token, tick_s=0.02)
        )
        url = server.start()
        try:
            admin = AdminClient(url, token)

            def stop_after_first(record: RoundRecord) -> None:
                if record.round == 1:
                    admin.stop(1)

            # Execute
            result = run_http_simulation(
                cfg,
                coordinator_url=url,
                progress=False,
                on_round=stop_after_first,
                options=HttpFleetOptions(admin_token=token),
            )
            # Assert: round 1 committed; the run ended rather than failing or waiting forever
            status = admin.status(1)
        finally:
            server.stop()
    assert status.state == "stopped"
    assert result.records[0].round == 1 and result.records[0].committed
    assert len(result.records) < cfg.rounds
