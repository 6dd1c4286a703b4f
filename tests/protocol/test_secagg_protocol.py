"""Tests of the SecAgg+ state machines: exact sums under dropouts, aborts, and every refusal rule."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.secagg import (
    AdvertiseKeys,
    DuplicateKey,
    KeyDirectory,
    MaskedInput,
    ModelMismatch,
    ProtocolParams,
    ProtocolViolation,
    RepeatedShareRequest,
    RoundAborted,
    SecAggClient,
    SecAggServer,
    ShareDelivery,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    WrongAddress,
    WrongStage,
    choose_degree,
    choose_threshold,
)

RING = 16
LENGTH = 12


def make_params(n: int, length: int = LENGTH, ring: int = RING, seed: int = 0) -> ProtocolParams:
    k = choose_degree(n)
    return ProtocolParams(
        round_id=7,
        num_nodes=n,
        degree=k,
        threshold=choose_threshold(k),
        ring_bits=ring,
        vector_len=length,
        graph_seed=seed.to_bytes(32, "little"),
        digest=b"\x11" * 32,
    )


@dataclass
class Trace:
    """What happened in one driven round."""

    params: ProtocolParams
    clients: list[SecAggClient]
    server: SecAggServer
    inputs: list[np.ndarray]
    sent: dict[Stage, set[int]] = field(default_factory=dict)
    refused: dict[int, Exception] = field(default_factory=dict)
    result: object = None
    aborted: RoundAborted | None = None
    snapshots: list[list[np.ndarray]] = field(default_factory=list)


def _snapshot(trace: Trace) -> None:
    # The vectors the server state holds in its own fields (what dataclasses.asdict(state)
    # gives as arrays), read field by field: asdict deep-copies the whole state (keys, outbox,
    # shares) at every message, which made a 100-node round quadratic in copies.
    state = trace.server.state
    values = [getattr(state, f.name) for f in dataclasses.fields(state)]
    trace.snapshots.append([v.copy() for v in values if isinstance(v, np.ndarray)])


def drive(params: ProtocolParams, drops: Sequence[set[int]], seed: int = 0) -> Trace:
    """Run a round where node i stays silent from stage s on if i is in drops[s] (s = 0..3).

    Every message goes through its wire bytes, as it would over HTTP.
    """
    n, p = params.num_nodes, params
    rng = np.random.default_rng(seed)
    inputs = [rng.integers(0, 1 << 8, p.vector_len, dtype=np.uint64) for _ in range(n)]
    clients = [SecAggClient(p, i, p.digest) for i in range(n)]
    server = SecAggServer(p)
    tr = Trace(p, clients, server, inputs)
    gone: set[int] = set()

    def attempt(i: int, stage: Stage, fn):  # type: ignore[no-untyped-def]
        try:
            out = fn()
        except RoundAborted as exc:  # a client that cannot go on just stops
            tr.refused[i] = exc
            gone.add(i)
            return None
        tr.sent.setdefault(stage, set()).add(i)
        return out

    try:
        for i in range(n):
            if i in drops[0]:
                gone.add(i)
                continue
            msg = attempt(i, Stage.ADVERTISE_KEYS, clients[i].advertise)
            server.receive_advertise(AdvertiseKeys.from_bytes(msg.to_bytes()))
            _snapshot(tr)
        dirs = server.close_advertise()
        for i, d in dirs.items():
            if i in drops[1] or i in gone:
                gone.add(i)
                continue
            d = KeyDirectory.from_bytes(d.to_bytes(), n)
            msg = attempt(i, Stage.SHARE_KEYS, lambda i=i, d=d: clients[i].share_keys(d))
            if msg is not None:
                server.receive_share_keys(ShareKeys.from_bytes(msg.to_bytes(), n))
            _snapshot(tr)
        deliveries = server.close_share_keys()
        for i, dl in deliveries.items():
            if i in drops[2] or i in gone:
                gone.add(i)
                continue
            dl = ShareDelivery.from_bytes(dl.to_bytes(), n)
            msg = attempt(
                i, Stage.MASKED_INPUT, lambda i=i, dl=dl: clients[i].masked_input(dl, inputs[i])
            )
            if msg is not None:
                wire = MaskedInput.from_bytes(msg.to_bytes(), p.vector_len, p.ring_bits)
                server.receive_masked_input(wire)
            _snapshot(tr)
        req = server.close_masked_input()
        req = UnmaskRequest.from_bytes(req.to_bytes(), n)
        for i in req.alive:
            if i in drops[3] or i in gone:
                continue
            msg = attempt(i, Stage.UNMASK, lambda i=i: clients[i].unmask(req))
            if msg is not None:
                server.receive_unmask(UnmaskResponse.from_bytes(msg.to_bytes(), n))
            _snapshot(tr)
        tr.result = server.finish()
    except RoundAborted as exc:
        tr.aborted = exc
    _snapshot(tr)
    return tr


def expected_success(tr: Trace) -> bool:
    """The success condition, from what was observed: enough nodes at every stage and at least
    t unmask shares (from responders that hold one) for every node that must be unmasked."""
    p, floor = tr.params, max(2, tr.params.threshold)
    u1, u2 = tr.sent.get(Stage.ADVERTISE_KEYS, set()), tr.sent.get(Stage.SHARE_KEYS, set())
    u3, u4 = tr.sent.get(Stage.MASKED_INPUT, set()), tr.sent.get(Stage.UNMASK, set())
    if min(len(u1), len(u2), len(u3)) < floor:
        return False
    for node in u2:
        holders = [i for i in u4 if node in tr.clients[i].state.held_shares]
        if len(holders) < p.threshold:
            return False
    return True


drop_sets = st.lists(st.sampled_from([0.0, 0.0, 0.02, 0.05, 0.1, 0.3]), min_size=4, max_size=4)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(n=st.integers(3, 100), rates=drop_sets, seed=st.integers(0, 2**16))
def test_sum_exact_with_enough_survivors_else_clean_abort(
    n: int, rates: list[float], seed: int
) -> None:
    # Prepare: dropouts injected independently at each of the four stages
    rng = np.random.default_rng(seed)
    drops = [{i for i in range(n) if rng.random() < r} for r in rates]
    params = make_params(n, seed=seed)
    # Execute
    tr = drive(params, drops, seed)
    # Assert
    ok = expected_success(tr)
    if tr.aborted is None:
        assert ok
        survivors = tr.result.contributors  # type: ignore[attr-defined]
        assert set(survivors) == tr.sent[Stage.MASKED_INPUT]
        want = sum((tr.inputs[i] for i in survivors), np.zeros(LENGTH, np.uint64))
        assert np.array_equal(tr.result.total, want & np.uint64((1 << RING) - 1))  # type: ignore[attr-defined]
    else:
        assert not ok, f"aborted although the survivors sufficed: {tr.aborted}"
        assert tr.server.state.masked_sum is None and not tr.server.state.shares
        assert tr.server.stage == Stage.ABORTED


def test_exact_sum_no_dropouts_and_dropouts_at_each_stage() -> None:
    n = 30
    for stage in range(4):
        drops = [set(), set(), set(), set()]
        drops[stage] = {1, 5, 9}
        tr = drive(make_params(n), drops, seed=stage)
        assert tr.aborted is None
        want = sum((tr.inputs[i] for i in tr.result.contributors), np.zeros(LENGTH, np.uint64))  # type: ignore[attr-defined]
        assert np.array_equal(tr.result.total, want & np.uint64((1 << RING) - 1))  # type: ignore[attr-defined]
        expected_missing = set() if stage == 3 else {1, 5, 9}
        assert set(range(n)) - set(tr.result.contributors) == expected_missing  # type: ignore[attr-defined]


def test_below_threshold_aborts_and_reveals_nothing() -> None:
    # Complete graph on 10 nodes: k = 9, t = 5; only 4 nodes answer the unmask request.
    params = make_params(10)
    assert (params.degree, params.threshold) == (9, 5)
    tr = drive(params, [set(), set(), set(), set(range(4, 10))])
    assert tr.aborted is not None and "fewer than t" in str(tr.aborted)
    assert tr.server.state.masked_sum is None and not tr.server.state.shares
    # Too few nodes from the start: the server stops before any share is relayed.
    tr = drive(params, [set(range(6)), set(), set(), set()])
    assert tr.aborted is not None and tr.sent.get(Stage.SHARE_KEYS) is None


def test_server_never_holds_an_individual_unmasked_update() -> None:
    # Prepare: inputs large enough that a coincidence is impossible.
    params = make_params(12, length=64, ring=32)
    tr = drive(params, [set(), {3}, {4}, set()], seed=3)
    assert tr.aborted is None
    singles = list(tr.inputs)
    # Assert: the state holds one vector at most (a masked running sum), never a per-node one,
    # and none of the vectors it ever held equals an individual input.
    assert all(len(snap) <= 1 for snap in tr.snapshots)
    for snap in tr.snapshots[:-1]:
        for arr in snap:
            for x in singles:
                assert not np.array_equal(arr, x)
    fields = dataclasses.asdict(tr.server.state)
    assert not any(
        isinstance(v, dict) and any(isinstance(x, np.ndarray) for x in v.values())
        for v in fields.values()
    )


def test_single_survivor_never_unmasked() -> None:
    params = make_params(3)
    tr = drive(params, [set(), set(), {1, 2}, set()])
    assert tr.aborted is not None and tr.result is None


def run_to_masked_input(
    p: ProtocolParams, inputs: list[np.ndarray], dropped: frozenset[int] = frozenset()
) -> tuple[list[SecAggClient], SecAggServer]:
    """Stages 1-3 for every node with its input (uint64[L]); a node in `dropped` computes its
    masked input but never sends it. The server then waits to close the masked-input stage."""
    clients = [SecAggClient(p, i, p.digest) for i in range(p.num_nodes)]
    server = SecAggServer(p)
    for c in clients:
        server.receive_advertise(c.advertise())
    for i, d in server.close_advertise().items():
        server.receive_share_keys(clients[i].share_keys(d))
    for i, dl in server.close_share_keys().items():
        msg = clients[i].masked_input(dl, inputs[i])
        if i not in dropped:
            server.receive_masked_input(msg)
    return clients, server


def _to_unmask(
    n: int = 8,
) -> tuple[ProtocolParams, list[SecAggClient], SecAggServer, UnmaskRequest]:
    p = make_params(n)
    zeros = [np.zeros(LENGTH, np.uint64) for _ in range(n)]
    clients, server = run_to_masked_input(p, zeros, dropped=frozenset({0}))
    return p, clients, server, server.close_masked_input()


def test_client_refuses_node_both_alive_and_dropped() -> None:
    p, clients, _, req = _to_unmask()
    evil = UnmaskRequest(p.round_id, req.alive, req.dropped + (req.alive[-1],))
    with pytest.raises(RepeatedShareRequest, match="both alive and dropped"):
        clients[1].unmask(evil)
    # Nothing was released, so the honest request still works.
    assert clients[1].unmask(req).shares


def test_client_refuses_second_share_request() -> None:
    _, clients, _, req = _to_unmask()
    clients[2].unmask(req)
    with pytest.raises(RepeatedShareRequest, match="second"):
        clients[2].unmask(req)
    flipped = UnmaskRequest(req.round_id, tuple(sorted(set(req.alive) | {0})), ())
    with pytest.raises(RepeatedShareRequest):
        clients[2].unmask(flipped)


def test_client_refuses_duplicate_public_keys() -> None:
    p = make_params(6)
    clients = [SecAggClient(p, i, p.digest) for i in range(6)]
    ads = [c.advertise() for c in clients]
    nb = sorted(clients[0].state.graph_neighbours)
    entries = [(j, ads[j].enc_public, ads[j].mask_public) for j in nb]
    entries[1] = (entries[1][0], entries[0][1], entries[1][2])  # node reuses another's key
    with pytest.raises(DuplicateKey):
        clients[0].share_keys(KeyDirectory(p.round_id, tuple(entries)))
    # Echoing the client's own key back is refused too.
    clients2 = SecAggClient(p, 0, p.digest)
    own = clients2.advertise()
    entries = [(j, ads[j].enc_public, ads[j].mask_public) for j in nb]
    entries[0] = (entries[0][0], own.enc_public, entries[0][2])
    with pytest.raises(DuplicateKey):
        clients2.share_keys(KeyDirectory(p.round_id, tuple(entries)))
    # The server refuses a duplicate advertisement as well.
    server = SecAggServer(p)
    server.receive_advertise(ads[0])
    with pytest.raises(DuplicateKey):
        server.receive_advertise(
            AdvertiseKeys(p.round_id, 1, ads[0].enc_public, ads[1].mask_public)
        )


def _to_deliveries(n: int = 6) -> tuple[list[SecAggClient], dict[int, ShareDelivery]]:
    p = make_params(n)
    clients = [SecAggClient(p, i, p.digest) for i in range(n)]
    server = SecAggServer(p)
    for c in clients:
        server.receive_advertise(c.advertise())
    for i, d in server.close_advertise().items():
        server.receive_share_keys(clients[i].share_keys(d))
    return clients, server.close_share_keys()


def test_client_refuses_relabelled_source() -> None:
    clients, deliveries = _to_deliveries()
    cts = list(deliveries[0].ciphertexts)
    (s0, c0), (s1, c1) = cts[0], cts[1]
    cts[0], cts[1] = (s0, c1), (s1, c0)  # the server swaps the labels
    with pytest.raises(WrongAddress):
        clients[0].masked_input(ShareDelivery(7, tuple(cts)), np.zeros(LENGTH, np.uint64))


def test_client_refuses_ciphertext_for_another_destination() -> None:
    clients, deliveries = _to_deliveries()
    src, ct = deliveries[1].ciphertexts[0]
    mine = [x for x in deliveries[0].ciphertexts if x[0] != src]
    if src == 0:  # node 0 cannot receive its own bundle; take one from another sender
        src, ct = deliveries[1].ciphertexts[1]
        mine = [x for x in deliveries[0].ciphertexts if x[0] != src]
    forged = ShareDelivery(7, tuple(sorted(mine + [(src, ct)])))
    with pytest.raises(WrongAddress):
        clients[0].masked_input(forged, np.zeros(LENGTH, np.uint64))


def test_device_refuses_mismatched_digest_and_wrong_stage() -> None:
    p = make_params(5)
    with pytest.raises(ModelMismatch):
        SecAggClient(p, 0, b"\x22" * 32)
    c = SecAggClient(p, 0, p.digest)
    with pytest.raises(WrongStage):
        c.unmask(UnmaskRequest(p.round_id, (0,), ()))
    c.advertise()
    with pytest.raises(ProtocolViolation):
        c.share_keys(KeyDirectory(p.round_id + 1, ()))


def test_mismatched_digests_between_devices_cannot_complete() -> None:
    # The server hands device 0 a different model: its keys and ciphertexts are bound to another
    # digest, so the others cannot decrypt its bundles and the round cannot finish with it.
    p = make_params(6)
    p_other = dataclasses.replace(p, digest=b"\x33" * 32)
    clients = [
        SecAggClient(p_other if i == 0 else p, i, (p_other if i == 0 else p).digest)
        for i in range(6)
    ]
    server = SecAggServer(p)
    for c in clients:
        server.receive_advertise(c.advertise())
    for i, d in server.close_advertise().items():
        server.receive_share_keys(clients[i].share_keys(d))
    deliveries = server.close_share_keys()
    receiver = next(
        i for i in deliveries if i != 0 and any(s == 0 for s, _ in deliveries[i].ciphertexts)
    )
    with pytest.raises(WrongAddress):
        clients[receiver].masked_input(deliveries[receiver], np.zeros(LENGTH, np.uint64))
