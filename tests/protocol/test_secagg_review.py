"""Review tests of SecAgg+ plans and state machines: malformed plans, thresholds, unmask shares."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coordinator.secure import SecureConfig, make_plan
from protocol.secagg import (
    MalformedMessage,
    ProtocolViolation,
    SecurePlan,
    model_digest,
)
from sdk.secure import SecureParticipant

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
