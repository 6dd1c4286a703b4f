"""An attack spec the runner could not use is refused when the config is built, not mid-run."""

from __future__ import annotations

import pytest

from mobile_sim.attacks import AlieAttack, alie_z
from mobile_sim.runner import SimConfig

_BASE = {"dataset": "digits", "clients": 50, "per_round": 4}


def test_alie_with_as_many_expected_attackers_as_the_cohort_is_refused_up_front() -> None:
    # Execute / Assert: round(0.88 x 4) = 4 attackers of 4; before, the config was accepted and
    # the run ended with "ALIE needs ... f < n" in the first round with two honest devices.
    with pytest.raises(ValueError, match=r"rounds to 4 attackers in a cohort of 4.*alie:z="):
        SimConfig(**_BASE, attack="alie", malicious=0.88)  # type: ignore[arg-type]


def test_alie_keeps_the_z_the_runner_used_and_an_explicit_z_needs_no_majority() -> None:
    # Prepare / Execute
    usual = SimConfig(**_BASE, attack="alie", malicious=0.3).build_attack()  # type: ignore[arg-type]
    given = SimConfig(**_BASE, attack="alie:z=1.5", malicious=0.88).build_attack()  # type: ignore[arg-type]
    # Assert: n = per_round, f = round(malicious x per_round) (at least 1)
    assert isinstance(usual, AlieAttack) and usual.z_value == alie_z(4, 1)
    assert isinstance(given, AlieAttack) and given.z_value == 1.5


def test_an_unknown_attack_or_parameter_fails_the_config() -> None:
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        SimConfig(**_BASE, attack="nope", malicious=0.2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown parameter"):
        SimConfig(**_BASE, attack="signflip:bogus=1", malicious=0.2)  # type: ignore[arg-type]
