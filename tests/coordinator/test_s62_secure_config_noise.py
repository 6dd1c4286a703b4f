"""`SecureConfig(noise=...)` from Python: the HTTP config's spelling works, anything else is
refused when the config is made. Before, any value was stored as given: `"skellam"` or a typo
made `dp` true, and the round failed later, when its plan was encoded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator
from mobile_sim.secure import run_secure_round
from protocol.secagg import NoiseKind
from sdk.secure import SecureParticipant

D = 400


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        ("none", NoiseKind.NONE),
        ("discrete_gaussian", NoiseKind.DISCRETE_GAUSSIAN),
        ("skellam", NoiseKind.SKELLAM),
        (2, NoiseKind.SKELLAM),
        (NoiseKind.SKELLAM, NoiseKind.SKELLAM),
    ],
)
def test_a_kind_name_or_code_becomes_the_member(given: Any, kind: NoiseKind) -> None:
    # Execute
    cfg = SecureConfig(noise=given, noise_multiplier=1.0 if kind else 0.0)
    # Assert: the member itself, so `dp`, equality and the plan's encoding all see a NoiseKind
    assert type(cfg.noise) is NoiseKind and cfg.noise is kind
    assert cfg.dp is (kind != NoiseKind.NONE)


@pytest.mark.parametrize("bad", ["bogus", "SKELLAM", "", True, 3, -1, None, 1.0])
def test_anything_else_is_refused_naming_the_kinds(bad: Any) -> None:
    # Execute / Assert
    with pytest.raises(
        ValueError,
        match="noise must be a NoiseKind or one of none, discrete_gaussian, skellam, got ",
    ):
        SecureConfig(noise=bad, noise_multiplier=1.0)


def test_a_round_configured_with_the_name_runs_with_that_noise() -> None:
    # Prepare: six devices, Skellam noise named as the task config writes it
    rng = np.random.default_rng(3)
    devs = [f"dev-{i}" for i in range(6)]
    parts = {d: SecureParticipant(D) for d in devs}
    ups = {d: (rng.normal(0, 0.01, D).astype(np.float32), 1) for d in devs}
    cfg = SecureConfig(coord_fraction=0.2, noise="skellam", noise_multiplier=1.0)
    coord = SecureCoordinator(np.zeros(D, np.float32), cfg)
    # Execute
    out, _ = run_secure_round(coord, parts, ups)
    # Assert: committed, and the round's plan carried Skellam noise
    assert out.committed and coord.version == 1
    assert out.measurements["dp"]["noise"] == "skellam"
