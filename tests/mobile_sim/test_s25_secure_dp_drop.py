"""The simulator's secure rounds settle a masked input as the SDK does for a task with
distributed DP noise: an input the published sum does not hold (an aborted group, an abandoned
round) is dropped, not returned to the device's residual. Whether a device's input is taken can
depend on other devices, so a returned input would let one device's data move other devices'
later inputs, past the one-device bound the accounting assumes (docs/privacy.md). Without noise
the input still goes back (tests/mobile_sim/test_abandoned_residual.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.secure import SecureConfig, SecureCoordinator
from mobile_sim.secure import run_secure_round
from protocol.secagg import NoiseKind, Stage
from protocol.secagg._noise import CtrRandom
from sdk.secure import SecureParticipant

D = 400


def _secure_round(
    config: SecureConfig, drop_at: dict[str, Stage]
) -> tuple[Any, dict[str, SecureParticipant], dict[str, npt.NDArray[np.float32]]]:
    devs = [f"d{i}" for i in range(5)]
    rng = np.random.default_rng(7)
    parts = {
        x: SecureParticipant(D, noise_rng=CtrRandom(bytes([i]) * 32)) for i, x in enumerate(devs)
    }
    for p in parts.values():
        p.residual = rng.normal(0, 0.01, D).astype(np.float32)
    ups = {x: (rng.normal(0, 0.05, D).astype(np.float32), 1) for x in devs}
    us = {x: ups[x][0] + parts[x].residual for x in devs}
    coord = SecureCoordinator(np.zeros(D, np.float32), config)
    out, _ = run_secure_round(coord, parts, ups, drop_at)
    return out, parts, us


NOISED = SecureConfig(coord_fraction=0.2, noise=NoiseKind.DISCRETE_GAUSSIAN, noise_multiplier=1.0)


def test_an_aborted_noised_secure_round_drops_the_masked_inputs() -> None:
    # Execute: every device sends its masked input, four of five go silent before unmask
    out, parts, us = _secure_round(NOISED, {f"d{i}": Stage.UNMASK for i in range(4)})

    # Assert: aborted; no device holds its whole u again: what its input stood for is gone
    assert not out.committed and out.contributors == []
    for dev, p in parts.items():
        assert p.unsettled is None
        assert not np.allclose(p.residual, us[dev], atol=1e-6), dev


def test_without_noise_the_same_round_returns_them() -> None:
    # Execute: the same round without noise (the guard: the setup does abort and return)
    out, parts, us = _secure_round(
        SecureConfig(coord_fraction=0.2), {f"d{i}": Stage.UNMASK for i in range(4)}
    )

    # Assert
    assert not out.committed
    for dev, p in parts.items():
        np.testing.assert_allclose(p.residual, us[dev], atol=1e-6)
