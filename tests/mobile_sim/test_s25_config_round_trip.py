"""`SimConfig.from_dict` rebuilds the config `as_dict` wrote, the realistic-mode defaults
included: `SimConfig(**cfg.as_dict())` raised TypeError on `over_selection_defaulted` and
`deadline_defaulted` (helper-269's review; bench/privacy.py and bench/robustness.py rebuild
their jobs' configs that way and now use `from_dict`)."""

from __future__ import annotations

import pytest

from mobile_sim.runner import SimConfig


def test_a_defaulted_realistic_config_round_trips() -> None:
    # Prepare: realistic mode fills in the coordinator's over-selection and deadline
    cfg = SimConfig(fleet="realistic").with_coordinator_deadline()
    values = cfg.as_dict()
    assert values["over_selection_defaulted"] and values["deadline_defaulted"]

    # Execute
    back = SimConfig.from_dict(values).with_coordinator_deadline()

    # Assert: the same values, still marked as defaults, and the same dict again
    assert back == cfg
    assert back.over_selection_defaulted and back.deadline_defaulted
    assert back.as_dict() == values


def test_given_values_stay_given() -> None:
    cfg = SimConfig(fleet="realistic", over_selection=1.3, deadline_s=60.0)
    back = SimConfig.from_dict(cfg.as_dict())
    assert back == cfg and not back.over_selection_defaulted and not back.deadline_defaulted


def test_a_config_with_only_its_ray_env_keys_is_refused_clearly() -> None:
    values = {**SimConfig().as_dict(), "ray_runtime_env_keys": ["env_vars"]}
    with pytest.raises(ValueError, match="by its keys only"):
        SimConfig.from_dict(values)
