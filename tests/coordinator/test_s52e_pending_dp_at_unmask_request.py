"""A secure DP round's `pending_dp` is stored when a group's unmask request goes out (helper-52e).

It was stored only when the round closed, just before unmasking. Once a group's survivors have
answered its unmask request, the server holds t shares of every secret the unmask needs, so a
server that reads everything it holds can unmask the noisy sum: a coordinator stopped between
those answers and the close lost that release from epsilon (the round, found open on restart,
was abandoned with no `dp`). The record now goes to the store before the request is sent, and
a group whose record cannot be stored gets no request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator
from protocol.secagg import NoiseKind, RoundAborted, Stage
from sdk.secure import SecureParticipant

from ._secure_service import fast_service, metric, secure_dp_task, secure_round_of
from .test_service_support import ADMIN, admin_get, create_task, device_client, wait_until

D = 300
DEVICES = [f"d{i}" for i in range(5)]


def _masked(on_request: Any) -> tuple[SecureCoordinator, Any, Any]:
    """One DP round of five devices run up to its masked-input close (not closed), with
    `on_request` as the task's `on_unmask_request`."""
    config = SecureConfig(
        coord_fraction=0.1, noise=NoiseKind.DISCRETE_GAUSSIAN, noise_multiplier=1.0, seed=7
    )
    coord = SecureCoordinator(np.zeros(D, np.float32), config)
    task = coord.open_round(DEVICES)
    task.on_unmask_request = on_request
    (sr,) = task.groups
    sessions = {
        d: SecureParticipant(D).join(sr.announce_one(d), sr.digest, coord.params, sr.node_of(d))
        for d in DEVICES
    }
    for d, s in sessions.items():
        sr.receive(Stage.ADVERTISE_KEYS, d, s.advertise())
    directories = sr.close(Stage.ADVERTISE_KEYS)
    for d, s in sessions.items():
        sr.receive(Stage.SHARE_KEYS, d, s.share_keys(directories[d]))
    deliveries = sr.close(Stage.SHARE_KEYS)
    rng = np.random.default_rng(4)
    for d, s in sessions.items():
        update = rng.normal(0, 0.01, D).astype(np.float32)
        sr.receive(Stage.MASKED_INPUT, d, s.masked_input(deliveries[d], update, 1, rng))
    return coord, task, sr


def test_the_release_is_handed_over_before_the_unmask_request() -> None:
    seen: list[dict[str, Any]] = []
    coord, task, sr = _masked(seen.append)
    requests = sr.close(Stage.MASKED_INPUT)
    # The record (as the close would store it before unmasking) came before the requests
    assert set(requests) == set(DEVICES) and len(seen) == 1
    assert seen[0] == coord.pending_dp(task)
    assert seen[0]["survivors"] == 5 and coord.accountant.rounds == 0


def test_a_group_whose_release_cannot_be_recorded_gets_no_unmask_request() -> None:
    def refuse(dp: dict[str, Any]) -> None:
        raise OSError("disk full")

    coord, task, sr = _masked(refuse)
    with pytest.raises(RoundAborted, match="could not be recorded.*no unmask request sent"):
        sr.close(Stage.MASKED_INPUT)
    assert sr.stage == Stage.ABORTED and not any(sr.server.state.shares.values())
    out = coord.close_round(task)
    assert not out.committed and "dp" not in out.measurements
    assert coord.accountant.rounds == 0


def test_a_restart_after_the_unmask_request_counts_the_release(tmp_path: Path) -> None:
    # Prepare: one committed secure DP round, then a second whose three devices send their
    # masked inputs and stop there: the unmask request is out when the coordinator stops
    db = tmp_path / "plume.db"
    with fast_service(db) as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, secure_dp_task(rounds=3))
            clients = [device_client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
            for c in clients:
                c.register()
            assert all(r.completed for r in secure_round_of(clients, task_id))
            wait_until(http, f"/v1/admin/tasks/{task_id}", "version", 1)
            eps1 = metric(http.get("/metrics").text, "plume_dp_epsilon", task_id)
            secure_round_of(clients, task_id, drop_at=Stage.UNMASK)
            open2 = admin_get(http, "/v1/rounds/2")
            assert open2["state"] == "open"
            assert open2["measurements"]["pending_dp"]["rounds"] == 2
            for c in clients:
                c.close()
    # Execute: restart on the same database
    with fast_service(db) as url:
        with httpx.Client(base_url=url) as http:
            after = admin_get(http, "/v1/rounds/2")
            eps_restart = metric(http.get("/metrics").text, "plume_dp_epsilon", task_id)
            rounds = metric(http.get("/metrics").text, "plume_dp_rounds", task_id)
    # Assert: round 2 is abandoned with its release counted: epsilon grew past round 1's
    assert after["state"] == "abandoned" and "restarted" in after["measurements"]["abandoned"]
    assert after["measurements"]["dp"]["rounds"] == 2
    assert eps_restart > eps1 and rounds == 2


def test_an_operator_stop_after_the_unmask_request_counts_the_release(tmp_path: Path) -> None:
    # Prepare: one committed round, then a second stopped in its unmask stage (the devices
    # sent their masked inputs and stop there)
    with fast_service(tmp_path / "plume.db") as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, secure_dp_task(rounds=3))
            clients = [device_client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
            for c in clients:
                c.register()
            assert all(r.completed for r in secure_round_of(clients, task_id))
            wait_until(http, f"/v1/admin/tasks/{task_id}", "version", 1)
            eps1 = metric(http.get("/metrics").text, "plume_dp_epsilon", task_id)
            secure_round_of(clients, task_id, drop_at=Stage.UNMASK)
            # Execute: the operator stops the task
            r = http.post(
                f"/v1/admin/tasks/{task_id}/stop", headers={"authorization": f"Bearer {ADMIN}"}
            )
            assert r.status_code == 200, r.text
            stopped = admin_get(http, "/v1/rounds/2")
            eps_stop = metric(http.get("/metrics").text, "plume_dp_epsilon", task_id)
            for c in clients:
                c.close()
    # Assert: round 2 is abandoned with its release in its dp record, and epsilon counts it
    assert stopped["state"] == "abandoned"
    assert stopped["measurements"]["abandoned"] == "stopped by the operator"
    assert stopped["measurements"]["dp"]["rounds"] == 2
    assert eps_stop > eps1
