"""Crash recovery: `kill -9` a real coordinator process at named points, restart it on the same
database, and check that no accepted update is lost or counted twice and the work resumes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from protocol.messages import Assignment
from sdk.client import Client, ClientError

from .test_service_support import (
    ADMIN,
    SPEC,
    SoftmaxTrainer,
    admin_get,
    create_task,
    device_client,
    local_data,
    start_logged,
    task_config,
    wait_until,
)


@contextmanager
def coordinator(
    db: Path, fault: str | None, fault_file: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A coordinator process on `db` (on port 0, its log in a file beside `db`), pausing at
    the fault point `fault` if one is given: (its URL, the process), killed on the way out."""
    env = dict(os.environ)
    env.pop("PLUME_FAULT_PAUSE_AT", None)
    if fault:
        env["PLUME_FAULT_PAUSE_AT"] = fault
        env["PLUME_FAULT_FILE"] = str(fault_file)
    fd, log = tempfile.mkstemp(prefix="serve-", suffix=".log", dir=db.parent)
    os.close(fd)
    url, proc = start_logged(
        [
            sys.executable, "-m", "coordinator.cli", "coordinator", "serve", "--db", str(db),
            "--port", "0", "--admin-token", ADMIN, "--poll", "0.05",
        ],
        Path(log),
        env=env,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _wait_file(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"fault point never reached ({path})"
        time.sleep(0.02)
    return path.read_text()


def _assigned(c: Client, task_id: int) -> Assignment:
    for _ in range(300):
        answer = c.check_in(task_id)
        if answer.assignment is not None:
            return answer.assignment
        time.sleep(0.05)
    raise AssertionError("never assigned")


@pytest.mark.parametrize("point", ["after_accept", "during_aggregation", "during_publish"])
def test_kill_9_then_restart_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, point: str
) -> None:
    # Prepare: a task of 2 rounds x 2 reports; devices A and B both selected in round 1
    db, fault_file = tmp_path / "plume.db", tmp_path / "fault"
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    with coordinator(db, point, fault_file) as (url, proc):
        task_id = create_task(url, task_config(rounds=2, selection_timeout_s=30))
        a, b = (device_client(url, d, retries=0, timeout=60) for d in dirs)
        a.register()
        b.register()
        a.check_in(task_id)
        b.check_in(task_id)  # the pool now holds the full cohort: round 1 opens
        assigns = [_assigned(a, task_id), _assigned(b, task_id)]
        pendings = []
        for i, (c, asg) in enumerate(zip((a, b), assigns, strict=True)):
            params, _ = c.fetch_model(asg)
            x, y = local_data(i)
            trained = (
                SoftmaxTrainer()
                .train(params, x, y, epochs=1, batch_size=10, lr=0.1, rng=np.random.default_rng(i))
                .params
            )
            pendings.append(c._core.encode(asg, SPEC, params, trained, 40))
        # Execute: drive the coordinator into the fault point, then SIGKILL it
        errors: list[BaseException] = []

        def send(c: Client, i: int) -> None:
            try:
                c.upload(pendings[i], SPEC)
            except (httpx.TransportError, ClientError) as exc:
                errors.append(exc)

        if point == "after_accept":
            t = threading.Thread(target=send, args=(a, 0))
            t.start()
        else:
            a.upload(pendings[0], SPEC)
            b.upload(pendings[1], SPEC)
        assert _wait_file(fault_file) == point
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if point == "after_accept":
            t.join(30)
            assert errors, "the upload's response should have been lost with the process"
    # Restart on the same database, without faults
    with coordinator(db, None, fault_file) as (url, _proc):
        with httpx.Client(base_url=url) as http:
            a.close()  # the apps restart too (one client per app_dir in a process)
            b.close()
            a, b = (device_client(url, d, timeout=60) for d in dirs)
            if point == "after_accept":
                receipt = a.resume_pending()  # the app restarts and re-sends with the same key
                assert receipt is not None and receipt.duplicate is True  # it had been accepted
                b.resume_pending()
            round1 = wait_until(http, "/v1/rounds/1", "state", "committed")
            # Assert: exactly two accepted updates, aggregated once, version 1 published once
            assert round1["reports"] == 2 and round1["version_after"] == 1
            assert round1["measurements"]["clients"] == 2
            assert round1["measurements"]["total_weight"] == 80.0
            with sqlite3.connect(db) as con:
                assert (
                    con.execute("SELECT COUNT(*) FROM updates WHERE round_id=1").fetchone()[0] == 2
                )
                versions = [
                    r[0] for r in con.execute("SELECT version FROM versions ORDER BY version")
                ]
            assert versions == [0, 1]
            # The work resumes: round 2 runs to the end, devices hold the server's exact model
            threads = [
                threading.Thread(
                    target=c.participate, args=(SoftmaxTrainer(), *local_data(i)),
                    kwargs={"task_id": task_id, "max_wait_s": 20},
                )
                for i, c in enumerate((a, b))
            ]  # fmt: skip
            for th in threads:
                th.start()
            for th in threads:
                th.join(60)
            task = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
            assert task["version"] == 2 and task["rounds_committed"] == 2
            _, version, _ = a.fetch_current(task_id, SPEC)
            assert version == 2 and a._core.store.state()["model_digest"] == task["model_digest"]
            assert admin_get(http, "/v1/rounds/2")["reports"] == 2
