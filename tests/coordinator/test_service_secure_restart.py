"""What survives a coordinator restart in the middle of a secure round: the committed model, the
ledger and the privacy ledger (epsilon) do; the round in flight is abandoned and the next one
starts fresh. Also: `/metrics` serves the anomaly and privacy series per task."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from protocol.secagg import Stage
from sdk.client import Client, CoordinatorUnreachable, SecureRoundReport

from ._secure_service import assignment, fast_service, metric, secure_dp_task, secure_round_of
from .test_service_support import (
    SPEC,
    SoftmaxTrainer,
    admin_get,
    create_task,
    device_client,
    local_data,
    task_config,
    wait_until,
)


def test_restart_mid_secure_round_keeps_commits_ledger_and_epsilon(tmp_path: Path) -> None:
    # Prepare: one committed secure round, then a second one stopped after advertise-keys
    db = tmp_path / "plume.db"
    with fast_service(db) as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, secure_dp_task(rounds=3))
            clients = [device_client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
            for c in clients:
                c.register()
            assert all(r.completed for r in secure_round_of(clients, task_id))
            wait_until(http, f"/v1/admin/tasks/{task_id}", "version", 1)
            ledger1 = admin_get(http, "/v1/rounds/1/bandwidth")
            eps1 = metric(http.get("/metrics").text, "plume_dp_epsilon", task_id)
            stopped = secure_round_of(clients, task_id, drop_at=Stage.SHARE_KEYS)
            assert all(r.stages == ["advertise-keys"] for r in stopped)
            assert admin_get(http, "/v1/rounds/2")["measurements"]["stage"] == "share-keys"
            model1 = admin_get(http, f"/v1/admin/tasks/{task_id}")["model_digest"]
    # Execute: restart on the same database, then run another round
    with fast_service(db) as url:
        with httpx.Client(base_url=url) as http:
            after = admin_get(http, "/v1/rounds/2")
            status = admin_get(http, f"/v1/admin/tasks/{task_id}")
            eps_restart = metric(http.get("/metrics").text, "plume_dp_epsilon", task_id)
            for c in clients:
                c.close()  # the apps restart too (one client per app_dir in a process)
            clients = [device_client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
            assert all(r.completed for r in secure_round_of(clients, task_id))
            final = wait_until(http, f"/v1/admin/tasks/{task_id}", "version", 2)
            eps2 = metric(http.get("/metrics").text, "plume_dp_epsilon", task_id)
            round3 = admin_get(http, "/v1/rounds/3")
            # Assert: round 2 was abandoned, round 1 and its ledger intact, epsilon kept
            assert (
                after["state"] == "abandoned" and "restarted" in after["measurements"]["abandoned"]
            )
            assert status["version"] == 1 and status["model_digest"] == model1
            assert admin_get(http, "/v1/rounds/1/bandwidth") == ledger1
            assert eps1 > 0 and eps_restart == eps1 and eps2 > eps1
            assert round3["state"] == "committed" and round3["measurements"]["dp"]["rounds"] == 2
            assert final["version"] == 2 and final["state"] == "done"
            assert metric(http.get("/metrics").text, "plume_dp_rounds", task_id) == 2


def test_metrics_serve_anomaly_and_privacy_series_per_task(tmp_path: Path) -> None:
    # Prepare: two plain tasks, one screening updates for anomalies, one with central DP; each
    # round waits for both devices (it opens once the second checks in: the selection timeout
    # is never reached)
    with fast_service(tmp_path / "plume.db") as url:
        with httpx.Client(base_url=url) as http:
            tasks = [
                create_task(http, task_config(rounds=1, aggregator=agg, selection_timeout_s=30.0))
                for agg in ("anomaly+fedavg", "dp:z=1,clip=5,population=2,sample=2+fedavg")
            ]
            clients = [device_client(url, str(tmp_path / f"dev{i}")) for i in range(2)]
            for c in clients:
                c.register()
            # Execute: one round per task
            for task_id in tasks:
                threads = [
                    threading.Thread(
                        target=c.participate,
                        args=(SoftmaxTrainer(), *local_data(i)),
                        kwargs={"task_id": task_id, "max_wait_s": 20},
                    )
                    for i, c in enumerate(clients)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
            text = http.get("/metrics").text
    # Assert: each task's series carry its label: norms and cosines of the screened task's
    # two updates, epsilon of the DP task's one release
    screened, private = tasks
    assert metric(text, "plume_update_norm_count", screened) == 2
    assert metric(text, "plume_update_cosine_to_aggregate_count", screened) == 2
    assert f'plume_update_norm_bucket{{le="+Inf",task="{screened}"}} 2.0' in text
    assert metric(text, "plume_update_norm_count", private) == 0
    assert metric(text, "plume_dp_epsilon", private) > 0
    assert metric(text, "plume_dp_rounds", private) == 1
    assert metric(text, "plume_dp_epsilon", screened) == 0
    assert text.count("# TYPE plume_dp_epsilon gauge") == 1


def test_kill_9_inside_a_secure_publish_abandons_the_round_and_the_next_commits(
    tmp_path: Path,
) -> None:
    # Prepare: a coordinator process that blocks inside the publish transaction of round 1
    from .test_service_persistence import coordinator

    db, fault_file = tmp_path / "plume.db", tmp_path / "fault"
    with coordinator(db, "during_publish", fault_file) as (url, proc):
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, secure_dp_task(rounds=2))
            clients = [device_client(url, str(tmp_path / f"dev{i}"), retries=0) for i in range(3)]
            for c in clients:
                c.register()
            # Execute: SIGKILL mid-publish, restart on the same database, run the next round
            ends = _round_killed_in_publish(clients, task_id, proc, fault_file)
    with coordinator(db, None, fault_file) as (url, _proc):
        with httpx.Client(base_url=url) as http:
            crashed = admin_get(http, "/v1/rounds/1")
            before = admin_get(http, f"/v1/admin/tasks/{task_id}")
            for c in clients:
                c.close()  # the apps restart too (one client per app_dir in a process)
            clients = [device_client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
            assert all(r.completed for r in secure_round_of(clients, task_id))
            after = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
            ledger = admin_get(http, "/v1/rounds/1/bandwidth")
            round2 = admin_get(http, "/v1/rounds/2")
    # Assert: every device sent its unmask message (the round closes once the last one is
    # taken); the answer to one the kill overtook is a lost connection, not a receipt
    assert len(ends) == 3
    for end in ends:
        if isinstance(end, SecureRoundReport):
            assert end.completed, end.detail
        else:
            assert isinstance(end, CoordinatorUnreachable), repr(end)
            assert end.request is not None
            assert (end.request.method, end.request.url.path) == (
                "POST",
                f"/v1/secure/rounds/{crashed['round_id']}/stages/unmask",
            )
    # ... the unpublished round left no version behind and was abandoned; its bytes stay
    # in the ledger; the next round started fresh and published version 1
    assert crashed["state"] == "abandoned" and "restarted" in crashed["measurements"]["abandoned"]
    assert before["version"] == 0
    assert after["version"] == 1 and after["rounds_committed"] == 1
    assert ledger["totals"]["up_payload_bytes"] > 0
    # ... and the crashed round's sum, unmasked before the kill, still counts in epsilon (its
    # record was stored before unmasking): the committed round is the second release
    assert crashed["measurements"]["dp"]["rounds"] == 1
    assert crashed["measurements"]["dp"]["survivors"] == 3
    assert round2["measurements"]["dp"]["rounds"] == 2


def _round_killed_in_publish(
    clients: list[Client], task_id: int, proc: subprocess.Popen[bytes], fault_file: Path
) -> list[SecureRoundReport | BaseException]:
    """Run one secure round (as `secure_round_of`) against the coordinator `proc`, which
    pauses inside the publish transaction (`during_publish`), and SIGKILL it there; how each
    device's part of the round ended: its report, or what its round raised.

    The close starts once the last unmask message is taken, in a worker thread, while the
    event loop is still sending answers, and a paused publish holds the store: the event loop
    then waits on the store's lock at its next write (the ledger row of an answer just sent,
    the nonce of the next request), so an answer not yet sent when the publish pauses is never
    sent. On an idle machine the answers win that race; on a loaded one the publish can win
    it: the test waited for every device to complete first, and failed once that device's
    30 s read timeout ran out, its thread's error at teardown. So the kill is sent as soon as the publish pauses, and a device whose answer the
    kill overtook ends with its connection lost, as with a real crash there
    (test_s53d_secure_answer_lost makes that happen on every run)."""
    from .test_service_persistence import _wait_file

    ends: list[SecureRoundReport | BaseException] = []

    def run(c: Client) -> None:
        try:
            a = assignment(c, task_id)
            ends.append(c.secure_round(a, lambda p: (np.full(SPEC.size, 0.02, np.float32), 1, 0.0)))
        except BaseException as exc:  # judged by the caller, not left to the thread's hook
            ends.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    try:
        # The whole round before the pause: 120 s bounds a hang (the round's deadline is 60 s)
        reached = _wait_file(fault_file, timeout=120)
    except AssertionError as exc:  # said below, with how the devices' rounds ended
        reached = str(exc)
    finally:
        proc.kill()
        proc.wait(10)
        for t in threads:
            t.join(60)  # a device waiting on the killed process sees its connection drop
    assert reached == "during_publish", (reached, ends)
    assert not any(t.is_alive() for t in threads)
    return ends


def test_a_publish_that_fails_after_unmasking_still_counts_in_epsilon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a store whose first publish fails (a full disk, say) after the sums are unmasked
    from coordinator.service.store import Store

    real_publish = Store.publish
    failures: list[int] = []

    def publish_once_failing(self: Store, **kwargs: Any) -> None:
        if not failures:
            failures.append(kwargs["round_id"])
            raise OSError("disk full")
        real_publish(self, **kwargs)

    monkeypatch.setattr(Store, "publish", publish_once_failing)
    with fast_service(tmp_path / "plume.db") as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, secure_dp_task(rounds=2))
            clients = [device_client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
            for c in clients:
                c.register()
            # Execute: the failed round, then one that commits
            secure_round_of(clients, task_id)
            failed = wait_until(http, "/v1/rounds/1", "state", "abandoned")
            assert all(r.completed for r in secure_round_of(clients, task_id))
            done = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
            committed = admin_get(http, "/v1/rounds/2")
            rounds_metric = metric(http.get("/metrics").text, "plume_dp_rounds", task_id)
    # Assert: the failed round is abandoned with its release on record, and epsilon composes
    # both releases
    assert failures == [1] and "disk full" in failed["measurements"]["error"]
    assert failed["measurements"]["dp"]["rounds"] == 1
    assert committed["state"] == "committed" and committed["measurements"]["dp"]["rounds"] == 2
    assert committed["measurements"]["dp"]["epsilon"] > failed["measurements"]["dp"]["epsilon"]
    assert done["version"] == 1 and rounds_metric == 2
