"""Review tests of SecAgg+ plans and state machines: malformed plans, thresholds, unmask shares."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coordinator.secure import SecureConfig, make_plan
from protocol.secagg import (
    AdvertiseKeys,
    KeyAgreementFailed,
    MalformedMessage,
    ProtocolParams,
    ProtocolViolation,
    SecAggClient,
    SecAggServer,
    SecurePlan,
    UnmaskResponse,
    choose_degree,
    choose_threshold,
    model_digest,
)
from sdk.secure import SecureParticipant

from .test_secagg_protocol import run_to_masked_input

D = 5000
SEGS = ((0, 40, 50, 1), (2000, 10, 1, 1))


def _plan() -> SecurePlan:
    return make_plan(SecureConfig(), 2, 12, D, np.arange(0, D, 7, dtype=np.int64), SEGS)


def _forge(plan: SecurePlan, **changes: object) -> bytes:
    """Canonical bytes of `plan` with fields changed, skipping the plan's own validation (what
    a malicious or buggy server could send)."""
    forged = object.__new__(SecurePlan)
    for f in dataclasses.fields(SecurePlan):
        object.__setattr__(forged, f.name, changes.get(f.name, getattr(plan, f.name)))
    return forged._encode()


@pytest.mark.parametrize(
    "changes",
    [
        {"sketch_segments": ((0, 40, 50, 0),)},  # pool 0: ZeroDivisionError in sketch_length
        {"sketch_segments": ((4990, 40, 50, 1),)},  # runs past the model
        {"sketch_segments": ((0, 2**32 - 1, 2**32 - 1, 1),)},  # 8.6e9 ring elements
        {"sketch_segments": ((0, 40, 50, 1), (0, 40, 50, 1))},  # overlapping segments
        {"sketch_segments": ((0, 0, 50, 1),)},  # an empty segment
        {"sketch_bits": 0},  # segments but no sketch bits: the vector would be short
        {"sketch_bits": 200},  # more levels than a uint64 holds
        {"degree": 6, "threshold": 4},  # n = 12: an even degree is fine, an odd one is not
        {"degree": 5, "threshold": 3},
        {"noise_variance": float("nan")},
        {"noise_variance": float("inf")},
        # more neighbours than u16 share x-coordinates: failed late, at share-keys
        {"num_nodes": 70_000, "degree": 65_536, "threshold": 40_000},
    ],
)
def test_device_refuses_malformed_plan_with_a_typed_error(changes: dict[str, object]) -> None:
    # Prepare: a plan a server could send, its fields outside what the protocol can run
    raw = _forge(_plan(), **changes)
    params = np.zeros(D, np.float32)
    valid = changes == {"degree": 6, "threshold": 4}
    # Execute / Assert: refused as MalformedMessage when decoded, before anything is allocated
    if valid:
        plan = SecurePlan.from_bytes(raw, D)
        SecureParticipant(D).join(raw, plan.protocol_params(model_digest(params)).digest, params, 0)
        return
    with pytest.raises(MalformedMessage):
        SecurePlan.from_bytes(raw, D)


def test_device_refuses_threshold_at_most_half_the_degree() -> None:
    # Prepare: t <= k/2 lets a server that sends different (each consistent) alive/dropped
    # lists to different neighbours gather t shares of both a node's mask key and its
    # self-mask seed: the guarantee needs t > k/2 (docs, threat model).
    plan = _plan()
    assert plan.degree == 11
    params = np.zeros(D, np.float32)
    for t in (1, 5):
        raw = _forge(plan, threshold=t)
        digest = SecurePlan.from_bytes(raw, D).protocol_params(model_digest(params)).digest
        # Execute / Assert
        with pytest.raises(ProtocolViolation, match="half"):
            SecureParticipant(D).join(raw, digest, params, 0)
    raw = _forge(plan, threshold=6)
    digest = SecurePlan.from_bytes(raw, D).protocol_params(model_digest(params)).digest
    SecureParticipant(D).join(raw, digest, params, 0)


def _params(n: int) -> ProtocolParams:
    k = choose_degree(n)
    return ProtocolParams(7, n, k, choose_threshold(k), 16, 5, bytes(32), b"\x11" * 32)


def _to_unmask(p: ProtocolParams) -> tuple[list[SecAggClient], SecAggServer, list[np.ndarray]]:
    """Every node through stage 3 with a random input; the server waits for unmask answers."""
    rng = np.random.default_rng(3)
    inputs = [rng.integers(0, 1 << 8, p.vector_len, dtype=np.uint64) for _ in range(p.num_nodes)]
    clients, server = run_to_masked_input(p, inputs)
    return clients, server, inputs


def test_server_refuses_two_shares_about_one_node_in_one_answer() -> None:
    # Prepare: one node repeats a share in its unmask answer (a bug, or a device sabotaging
    # the round: the repeated x made every reconstruction of that node fail and the round abort)
    p = _params(6)
    clients, server, inputs = _to_unmask(p)
    request = server.close_masked_input()
    answers = [c.unmask(request) for c in clients]
    bad = answers[0]
    repeated = dataclasses.replace(bad, shares=(*bad.shares, bad.shares[0]))
    # Execute / Assert: the repeated answer is refused and changes nothing
    with pytest.raises(ProtocolViolation, match="two shares about one node"):
        server.receive_unmask(UnmaskResponse.from_bytes(repeated.to_bytes(), p.num_nodes))
    assert not server.state.shares and not server.state.responders
    for ans in answers[1:]:
        server.receive_unmask(ans)
    result = server.finish()
    want = sum(inputs, np.zeros(p.vector_len, np.uint64)) & np.uint64((1 << 16) - 1)
    assert np.array_equal(result.total, want)


@pytest.mark.parametrize("low", [bytes(32), b"\x01" + bytes(31)])  # points of order 1 and 4
def test_server_refuses_a_low_order_public_key(low: bytes) -> None:
    # Prepare: one node advertises a low-order X25519 point. Every neighbour's key agreement
    # with it fails (the all-zero shared secret), so before, each neighbour refused at
    # share-keys and the round aborted because of one device.
    p = _params(8)
    clients = [SecAggClient(p, i, p.digest) for i in range(p.num_nodes)]
    server = SecAggServer(p)
    ads = [c.advertise() for c in clients]
    forged = dataclasses.replace(ads[0], mask_public=low)
    # Execute / Assert: the advertisement is refused and stores nothing; the others go on
    with pytest.raises(KeyAgreementFailed):
        server.receive_advertise(AdvertiseKeys.from_bytes(forged.to_bytes()))
    assert not server.state.keys
    for ad in ads[1:]:
        server.receive_advertise(ad)
    dirs = server.close_advertise()
    for i, c in enumerate(clients[1:], 1):
        server.receive_share_keys(c.share_keys(dirs[i]))
    assert server.state.senders == set(range(1, p.num_nodes))


@pytest.mark.parametrize("node", [-1, 12, 2**32])
def test_device_refuses_a_node_index_outside_the_plan(node: int) -> None:
    # Prepare: the server names the device's node (the x-plume-secagg-node header)
    plan = _plan()
    params = np.zeros(D, np.float32)
    digest = plan.protocol_params(model_digest(params)).digest
    # Execute / Assert: a typed refusal (was a bare ValueError, not a SecAggError)
    with pytest.raises(ProtocolViolation, match="outside"):
        SecureParticipant(D).join(plan.to_bytes(), digest, params, node)


def test_a_plan_at_max_degree_is_accepted_and_one_above_is_not() -> None:
    # Prepare: the largest degree a device takes on, and the next even one
    from protocol.secagg import MAX_DEGREE

    big = {"num_nodes": 5_000, "ring_bits": 16}
    at = _forge(_plan(), **big, degree=MAX_DEGREE, threshold=MAX_DEGREE // 2 + 1)
    above = _forge(_plan(), **big, degree=MAX_DEGREE + 2, threshold=MAX_DEGREE // 2 + 2)

    # Execute / Assert
    assert SecurePlan.from_bytes(at, D).degree == MAX_DEGREE == 2048
    with pytest.raises(MalformedMessage, match="above 2048: a device's share-keys work"):
        SecurePlan.from_bytes(above, D)
