"""An in-process secure round (`SecureCoordinator`, as mobile_sim runs it) whose group aborts on
the unmask error-correction budget (499e333) names its suspects by device id in the abort
reason, not only by node number: the service maps the nodes itself
(`SecureRegistry.suspect_devices`), an in-process caller has no plan to do so. Before, the
reason said only `suspect nodes, ...: [n]`."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator
from mobile_sim.secure import run_secure_round
from protocol.secagg import Stage, UnmaskResponse
from protocol.secagg import _server as server_mod
from sdk.secure import SecureParticipant, SecureSession

from .test_secure_robust_unmask import _lie

D = 200
# Node indices in the round's plan, each lying about the secrets of two others: no secret gets
# two wrong shares, so each liar needs its own correction (tests/coordinator/
# test_h175_secure_unmask_budget.py's)
LIES = {2: {0, 1}, 9: {10, 11}}
LIARS = set(LIES)


def _capture_tasks(coord: SecureCoordinator) -> list[Any]:
    """The tasks `coord.open_round` plans, kept for the test to read."""
    tasks: list[Any] = []
    real = coord.open_round

    def open_round(*args: Any, **kwargs: Any) -> Any:
        tasks.append(real(*args, **kwargs))
        return tasks[-1]

    coord.open_round = open_round  # type: ignore[method-assign]
    return tasks


def test_an_unmask_budget_abort_names_the_suspect_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: one group of 12 devices, a budget of 1 corrected secret, two liars (each needs
    # its own correction)
    monkeypatch.setattr(server_mod, "MAX_ROBUST_DECODES", 1)
    rng = np.random.default_rng(0)
    devs = [f"dev-{i:03d}" for i in range(12)]
    parts = {d: SecureParticipant(D) for d in devs}
    device_of = {id(p): d for d, p in parts.items()}
    ups = {d: (rng.normal(0, 0.01, D).astype(np.float32), 1) for d in devs}
    liar_devices: dict[int, str] = {}
    honest_unmask = SecureSession.unmask

    def unmask(self: SecureSession, request: bytes) -> bytes:
        out = honest_unmask(self, request)
        node = self.client.state.node
        if node not in LIARS:
            return out
        liar_devices[node] = device_of[id(self.participant)]
        msg = UnmaskResponse.from_bytes(out, self.plan.num_nodes)
        lies = tuple((n, k, _lie(s) if n in LIES[node] else s) for n, k, s in msg.shares)
        return dataclasses.replace(msg, shares=lies).to_bytes()

    monkeypatch.setattr(SecureSession, "unmask", unmask)
    coord = SecureCoordinator(
        np.zeros(D, np.float32), SecureConfig(coord_fraction=0.1, max_weight=1, clip_norm=2.0)
    )
    tasks = _capture_tasks(coord)
    # Execute
    out, _ = run_secure_round(coord, parts, ups, {}, rng_for=lambda d: np.random.default_rng(1))
    # Assert: aborted on the budget; the reason names the suspect nodes and, in the same
    # order, their devices, each a liar's
    assert not out.committed
    (reason,) = out.measurements["abort_reasons"]
    assert "more than 1 secrets needed error correction" in reason, reason
    found = re.search(
        r"suspect nodes, [^:]*: \[([\d, ]+)\]; suspect devices, in node order: \[(.*)\]$", reason
    )
    assert found is not None, reason
    nodes = [int(n) for n in found.group(1).split(",")]
    devices = [d.strip().strip("'") for d in found.group(2).split(",")]
    assert nodes and set(nodes) <= LIARS
    assert devices == [liar_devices[n] for n in nodes]
    # the server's own record says the same
    assert tasks[0].groups[0].server.state.abort_reason == reason


def test_an_unmask_abort_without_suspects_keeps_the_servers_reason() -> None:
    # Prepare: an honest group of 12 in which 7 devices go silent at unmask: too few shares
    rng = np.random.default_rng(0)
    devs = [f"dev-{i:03d}" for i in range(12)]
    parts = {d: SecureParticipant(D) for d in devs}
    ups = {d: (rng.normal(0, 0.01, D).astype(np.float32), 1) for d in devs}
    coord = SecureCoordinator(
        np.zeros(D, np.float32), SecureConfig(coord_fraction=0.1, max_weight=1, clip_norm=2.0)
    )
    tasks = _capture_tasks(coord)
    # Execute
    out, _ = run_secure_round(
        coord, parts, ups, dict.fromkeys(devs[:7], Stage.UNMASK), lambda d: np.random.default_rng(1)
    )
    # Assert: the server's reason as it is, with no devices appended
    assert not out.committed
    (reason,) = out.measurements["abort_reasons"]
    assert "suspect" not in reason and reason == tasks[0].groups[0].server.state.abort_reason
