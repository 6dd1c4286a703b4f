"""A secure round with one survivor lying in the unmask stage still commits the exact mean."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator
from mobile_sim.secure import run_secure_round
from protocol.secagg import UnmaskResponse
from protocol.secagg._shamir import _HEADER, CHECK_BYTES, COMMIT_BYTES, _check
from sdk.secure import SecureParticipant, SecureSession

D = 2000
LIAR = 4  # a node index in the round's plan


def _lie(share: bytes) -> bytes:
    body = bytearray(share[:-CHECK_BYTES])
    body[_HEADER.size + COMMIT_BYTES] ^= 0x5A  # first chunk's y, low byte
    return bytes(body) + _check(bytes(body))


def test_a_lying_survivor_is_reported_and_the_round_commits_the_exact_mean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: 20 devices, one group; node 4 rewrites every share it returns at unmask.
    rng = np.random.default_rng(0)
    devs = [f"dev-{i:03d}" for i in range(20)]
    parts = {d: SecureParticipant(D) for d in devs}
    ups = {d: (rng.normal(0, 0.01, D).astype(np.float32), 1) for d in devs}
    honest_unmask = SecureSession.unmask

    def unmask(self: SecureSession, request: bytes) -> bytes:
        out = honest_unmask(self, request)
        if self.client.state.node != LIAR:
            return out
        msg = UnmaskResponse.from_bytes(out, self.plan.num_nodes)
        lies = tuple((n, k, _lie(s)) for n, k, s in msg.shares)
        return dataclasses.replace(msg, shares=lies).to_bytes()

    monkeypatch.setattr(SecureSession, "unmask", unmask)
    coord = SecureCoordinator(
        np.zeros(D, np.float32), SecureConfig(coord_fraction=0.1, max_weight=1, clip_norm=2.0)
    )

    # Execute
    out, _ = run_secure_round(coord, parts, ups, {})

    # Assert: committed with all 20, the liar named, and the mean is what the devices sent.
    assert out.committed and len(out.contributors) == 20
    liar = [d for d in devs if d in out.measurements.get("suspect_devices", [])]
    assert len(liar) == 1
    sent = [ups[d][0].astype(np.float64) - parts[d].residual for d in out.contributors]
    np.testing.assert_allclose(out.update, np.mean(sent, axis=0), atol=1e-6)
