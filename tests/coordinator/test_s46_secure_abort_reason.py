"""Stop 46: an aborted secure round says why in `measurements.abandoned` and in its log line.

helper-384 sent a well-framed masked input of random values to a secure round over HTTP: the
round aborted as it should, `measurements.abort_reasons` named the forged input, but
`abandoned` (and the operator's log line, which prints it) said "secure round aborted: too few
devices at some stage", so an attack read as ordinary dropouts. It now carries the groups'
own reasons (`_secure_abandon_reason`), and keeps the old text only when none was given.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import sdk.secure
from coordinator.service import ServerThread
from coordinator.service.rounds import _secure_abandon_reason
from protocol.messages import CodecParams
from protocol.secagg import SecurePlan
from sdk.client import Client

from .test_service_secure import STAGE_TIMEOUT_S
from .test_service_support import (
    SPEC,
    admin_get,
    await_assignment,
    create_task,
    device_client,
    serve_fast,
    task_config,
    wait_until,
)

served = pytest.fixture(serve_fast, name="served")


def test_a_forged_masked_input_is_named_in_the_abandon_reason_and_the_log(
    served: ServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    # Prepare: 4 devices, all needed; the first (by id) sends its weight coordinate as 2 where
    # a device sends 1..w_max, so the total weight is outside what 4 devices can send
    server = served.url
    clients = [device_client(server, str(tmp_path / f"dev{i}")) for i in range(4)]
    for c in clients:
        c.register()
    forger = sorted(c.device_id for c in clients)[0]
    mark = np.full(SPEC.size, 0.0123, dtype=np.float32)  # the forger's update, and no other's
    honest = sdk.secure.encode_for_plan

    def forged(u: Any, plan: SecurePlan, w: int, rng: Any, noise: Any = None, node: Any = None):  # type: ignore[no-untyped-def]
        vector, sent = honest(u, plan, w, rng, noise, node)
        if np.array_equal(np.asarray(u, dtype=np.float32), mark):
            vector[-1] = np.uint64(plan.max_weight + 5)  # the weight coordinate
        return vector, sent

    monkeypatch.setattr(sdk.secure, "encode_for_plan", forged)
    with httpx.Client(base_url=server) as http:
        cfg = task_config(
            rounds=1, clients_per_round=4, over_selection=1.0, min_reports=4,
            selection_timeout_s=60.0, deadline_s=60.0, seed=7,
            downlink=CodecParams(topk=1.0, bits=32),
            secure={"coord_fraction": 0.5, "stage_timeout_s": STAGE_TIMEOUT_S},
        )  # fmt: skip
        task_id = create_task(http, cfg)
        errors: list[BaseException] = []

        def run(c: Client) -> None:
            try:
                a = await_assignment(c, task_id, timeout=60)
                rng = np.random.default_rng(int(c.device_id[:12], 16))
                delta = rng.normal(0, 0.05, SPEC.size).astype(np.float32)
                if c.device_id == forger:
                    delta = mark
                c.secure_round(a, lambda params: (delta, 1, 0.0))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        # Execute
        with caplog.at_level(logging.INFO, logger="plume.coordinator"):
            threads = [threading.Thread(target=run, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            status = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done", timeout=60)
        (r,) = admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")

    # Assert: the model is unchanged, and the reason names the forged input, not dropouts
    assert not errors, errors
    assert status["version"] == 0 and r["state"] == "abandoned"
    (reason,) = r["measurements"]["abort_reasons"]
    assert "forged or corrupt" in reason
    assert r["measurements"]["abandoned"] == f"secure round aborted: {reason}"
    lines = [m.getMessage() for m in caplog.records if m.name == "plume.coordinator"]
    assert [m for m in lines if " abandoned: " in m] == [
        f"task {task_id} secure round {r['round_id']} abandoned: secure round aborted: {reason} "
        "(0 reports of 4 selected devices); 1 of the task's 1 rounds closed"
    ]


def test_the_reason_lists_three_groups_and_counts_the_rest() -> None:
    reasons = [f"group {g} of 5: too few masked inputs" for g in range(1, 6)]
    assert _secure_abandon_reason(reasons) == (
        "secure round aborted: group 1 of 5: too few masked inputs; group 2 of 5: too few "
        "masked inputs; group 3 of 5: too few masked inputs; and 2 more"
    )
    assert _secure_abandon_reason(reasons[:1]) == (
        "secure round aborted: group 1 of 5: too few masked inputs"
    )
    assert (
        _secure_abandon_reason([])
        == _secure_abandon_reason(None)
        == ("secure round aborted: too few devices at some stage")
    )
