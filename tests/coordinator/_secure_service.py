"""Shared helpers for the tests that run secure-aggregation rounds through the coordinator
service with real SDK clients (no tests here): a discrete-Gaussian secure task, a fast-ticking
service, one round run by every client in threads, and a per-task `/metrics` reading."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import Assignment, CodecParams, TaskConfig
from protocol.secagg import Stage
from sdk.client import Client, SecureRoundReport

from .test_service_support import ADMIN, SPEC, task_config

SECURE_DP = {
    "coord_fraction": 0.25,
    "stage_timeout_s": 100.0,
    "noise": "discrete_gaussian",
    "noise_multiplier": 1.0,
}


def secure_dp_task(rounds: int, **secure: Any) -> TaskConfig:
    """A secure task of `rounds` rounds of exactly 3 devices with distributed discrete-Gaussian
    noise (`SECURE_DP`, updated with `secure`)."""
    return task_config(
        rounds=rounds, clients_per_round=3, over_selection=1.0, min_reports=3,
        selection_timeout_s=60.0, deadline_s=60.0, downlink=CodecParams(topk=1.0, bits=32),
        secure=dict(SECURE_DP, **secure),
    )  # fmt: skip


def fast_service(db: Path) -> ServerThread:
    """A loopback coordinator on `db` that polls every 50 ms and ticks every 20 ms."""
    return ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02))


def assignment(c: Client, task_id: int) -> Assignment:
    """`c` checks in to `task_id` every 20 ms until it is assigned a round (20 s at most)."""
    give_up = time.monotonic() + 20
    while True:
        answer = c.check_in(task_id)
        if answer.assignment is not None:
            return answer.assignment
        assert time.monotonic() < give_up
        time.sleep(0.02)


def secure_round_of(
    clients: list[Client], task_id: int, drop_at: Stage | None = None
) -> list[SecureRoundReport]:
    """Every client is assigned and runs its part of one secure round (an update of 0.02 in
    every coordinate, weight 1), each in its own thread; their reports, in the order they end."""
    out: list[SecureRoundReport] = []

    def run(c: Client) -> None:
        a = assignment(c, task_id)
        out.append(
            c.secure_round(a, lambda p: (np.full(SPEC.size, 0.02, np.float32), 1, 0.0),
                           drop_at=drop_at)
        )  # fmt: skip

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == len(clients)
    return out


def metric(text: str, name: str, task: int) -> float:
    """The value of series `name` labelled `task` in the `/metrics` text."""
    m = re.search(rf'^{name}\{{task="{task}"\}} (\S+)$', text, re.MULTILINE)
    assert m is not None, f"{name} for task {task} not in /metrics"
    return float(m.group(1))
