"""A stage's close aborts at once when a needed node has fewer than t live neighbours.

With exactly t devices left on a complete graph (k = n - 1) each device has t - 1 live
neighbours: every honest device must refuse the next stage, and the reconstruction could not
get t shares of any secret. The server's floor (max(2, t) devices) let the stage open anyway,
so the round waited a whole stage timeout and then aborted with a misleading reason. Now the
close aborts, naming the nodes (device ids at the coordinator layer). A secure task's
`min_contributors` (min_reports) is applied when a group's masked-input stage closes.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator
from mobile_sim.secure import run_secure_round
from protocol.secagg import (
    ProtocolParams,
    RoundAborted,
    SecAggClient,
    SecAggServer,
    Stage,
    choose_degree,
    choose_threshold,
)
from sdk.secure import SecureParticipant

N = 5  # complete graph: k = 4, t = 3


def _params() -> ProtocolParams:
    k = choose_degree(N)
    return ProtocolParams(3, N, k, choose_threshold(k), 16, 4, bytes(32), b"\x07" * 32)


def _run_to(stage: Stage, live: int) -> tuple[SecAggServer, list[SecAggClient]]:
    """A server whose `stage` is open, with only nodes 0..live-1 taking part in it."""
    p = _params()
    server = SecAggServer(p)
    clients = [SecAggClient(p, i, p.digest) for i in range(N)]
    at = N if stage != Stage.ADVERTISE_KEYS else live
    for c in clients[:at]:
        server.receive_advertise(c.advertise())
    if stage == Stage.ADVERTISE_KEYS:
        return server, clients
    at = N if stage != Stage.SHARE_KEYS else live
    for i, d in server.close_advertise().items():
        if i < at:
            server.receive_share_keys(clients[i].share_keys(d))
    if stage == Stage.SHARE_KEYS:
        return server, clients
    for i, d in server.close_share_keys().items():
        if i < live:
            server.receive_masked_input(clients[i].masked_input(d, np.ones(4, np.uint64)))
    return server, clients


@pytest.mark.parametrize(
    ("stage", "close", "what"),
    [
        (Stage.ADVERTISE_KEYS, "close_advertise", "neighbours with keys that can share"),
        (Stage.SHARE_KEYS, "close_share_keys", "neighbours that shared keys"),
        (Stage.MASKED_INPUT, "close_masked_input", "live neighbours"),
    ],
)
def test_exactly_t_nodes_left_abort_the_stage_close(stage: Stage, close: str, what: str) -> None:
    # Prepare: t = 3 of 5 nodes take part in `stage` (each has 2 live neighbours)
    server, _ = _run_to(stage, 3)
    assert server.state.params.threshold == 3
    # Execute / Assert: the close aborts at once, naming the nodes short of neighbours
    with pytest.raises(RoundAborted, match=f"fewer than t=3 {what}") as exc:
        getattr(server, close)()
    assert "[0, 1, 2]" in str(exc.value)
    assert server.state.short_nodes == (0, 1, 2)
    assert server.stage == Stage.ABORTED and server.state.abort_reason == str(exc.value)


def test_t_plus_one_nodes_left_unmask_as_before() -> None:
    # Prepare: 4 of 5 masked inputs (each survivor has t = 3 live neighbours)
    server, clients = _run_to(Stage.MASKED_INPUT, 4)
    # Execute
    request = server.close_masked_input()
    for i in request.alive:
        server.receive_unmask(clients[i].unmask(request))
    # Assert
    assert server.finish().total.tolist() == [4] * 4
    assert server.state.short_nodes == ()


def _coordinator() -> tuple[SecureCoordinator, list[str], dict[str, tuple[np.ndarray, int]]]:
    d = 200
    devs = [f"dev-{i}" for i in range(10)]
    rng = np.random.default_rng(0)
    ups = {x: (rng.normal(0, 0.01, d).astype(np.float32), 1) for x in devs}
    return SecureCoordinator(np.zeros(d, np.float32), SecureConfig()), devs, ups


def test_a_coordinator_round_names_the_devices_short_of_live_neighbours() -> None:
    # Prepare: 10 devices in one group (k = 9, t = 5); 5 drop before the masked input
    coord, devs, ups = _coordinator()
    parts = {x: SecureParticipant(200) for x in devs}
    drops = dict.fromkeys(devs[5:], Stage.MASKED_INPUT)
    # Execute
    out, stats = run_secure_round(coord, parts, ups, drops)
    # Assert: aborted at the masked-input close, no unmask request sent (nobody refused one)
    assert not out.committed and not stats.refused
    (reason,) = out.measurements["abort_reasons"]
    assert "fewer than t=5 live neighbours at the close of masked input" in reason
    assert "['dev-0', 'dev-1', 'dev-2', 'dev-3', 'dev-4']" in reason


def _drive(coord: SecureCoordinator, devs: list[str], ups: dict, silent: set[str], need: int):
    """One round opened with `min_contributors=need`, devices in `silent` never sending their
    masked input; returns (task, the masked-input close's abort or None)."""
    task = coord.open_round(devs, min_contributors=need)
    (sr,) = task.groups
    parts = {x: SecureParticipant(200) for x in devs}
    sessions = {
        dev: parts[dev].join(body, sr.digest, coord.params, sr.node_of(dev))
        for dev, body in sr.announce().items()
    }
    for dev in devs:
        sr.receive(Stage.ADVERTISE_KEYS, dev, sessions[dev].advertise())
    for dev, down in sr.close(Stage.ADVERTISE_KEYS).items():
        sr.receive(Stage.SHARE_KEYS, dev, sessions[dev].share_keys(down))
    rng = np.random.default_rng(1)
    for dev, down in sr.close(Stage.SHARE_KEYS).items():
        if dev not in silent:
            body = sessions[dev].masked_input(down, ups[dev][0], ups[dev][1], rng)
            sr.receive(Stage.MASKED_INPUT, dev, body)
    try:
        sr.close(Stage.MASKED_INPUT)
    except RoundAborted as exc:
        return task, exc
    return task, None


def test_min_reports_is_applied_when_the_masked_input_stage_closes() -> None:
    # Prepare: 10 devices, 2 silent at the masked input: 8 masked inputs, min_reports 9
    coord, devs, ups = _coordinator()
    # Execute
    task, exc = _drive(coord, devs, ups, set(devs[8:]), need=9)
    # Assert: the group aborts at the close, no unmask stage; close_round says why
    assert exc is not None and "at most 8 masked inputs" in str(exc)
    assert "below the round's 9 (min_reports)" in str(exc)
    (sr,) = task.groups
    assert sr.stage == Stage.ABORTED
    out = coord.close_round(task, min_contributors=9)
    assert not out.committed and out.measurements["abort_reasons"] == [str(exc)]


def test_min_reports_met_at_the_masked_input_close_opens_the_unmask_stage() -> None:
    coord, devs, ups = _coordinator()
    task, exc = _drive(coord, devs, ups, set(devs[8:]), need=8)
    assert exc is None and task.groups[0].stage == Stage.UNMASK
    with pytest.raises(ValueError, match="min_contributors"):
        coord.open_round(devs, min_contributors=0)
