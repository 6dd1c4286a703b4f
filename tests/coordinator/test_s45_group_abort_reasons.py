"""In a grouped secure round each abort reason names its group (s45).

With several SecAgg groups the round's `aborted` (service) and `abort_reasons` (in-process
`SecureCoordinator`) listed one reason per aborted group, in group order, without saying which
group: "2 nodes advertised keys, need 3" three times over 4 groups said nothing of which one
still ran. Each now starts "group G of N: "; a one-group round's reason is as before.
"""

from __future__ import annotations

import numpy as np

from coordinator.secure import SecureConfig, SecureCoordinator, group_reason
from coordinator.service._secagg_routes import SecureRegistry
from protocol.secagg import Stage
from sdk.secure import SecureParticipant

from .test_h73_secure_registry_cost import D, _registry


def test_the_registry_names_each_aborted_group() -> None:
    # Prepare: 4 groups of 3; group 2 (index 1) advertises, the others do not
    registry, _ = _registry(12)
    task = registry._rounds[1].task
    for d in task.groups[1].device_ids:
        plan, digest, node = registry.setup(1, d)
        session = SecureParticipant(D).join(plan, digest, registry.coordinator.params, node)
        registry.upload(1, Stage.ADVERTISE_KEYS, d, session.advertise())
    # Execute
    registry.close_stage(1, Stage.ADVERTISE_KEYS)
    reasons = registry.abort_reasons(1)
    # Assert: groups 1, 3 and 4 of 4, in that order (before: three identical texts)
    assert [r.split(":", 1)[0] for r in reasons] == ["group 1 of 4", "group 3 of 4", "group 4 of 4"]
    assert all("advertised keys" in r for r in reasons), reasons


def test_one_group_keeps_its_reason_unprefixed() -> None:
    # Prepare: one group of 3, nobody advertises
    config = SecureConfig(coord_fraction=0.1, seed=3)
    registry = SecureRegistry(SecureCoordinator(np.zeros(D, np.float32), config))
    registry.open_round([f"dev-{i}" for i in range(3)], 1)
    # Execute
    registry.close_stage(1, Stage.ADVERTISE_KEYS)
    # Assert
    (reason,) = registry.abort_reasons(1)
    assert not reason.startswith("group "), reason


def test_group_reason() -> None:
    assert group_reason(0, 1, "x") == "x"
    assert group_reason(2, 5, "too few") == "group 3 of 5: too few"


def test_the_in_process_coordinator_names_each_aborted_group() -> None:
    # Prepare: 9 devices in 3 groups of 3; every device of one group drops at advertise-keys
    from mobile_sim.secure import run_secure_round

    config = SecureConfig(coord_fraction=0.1, group_size=3, seed=3)
    coord = SecureCoordinator(np.zeros(D, np.float32), config)
    ids = [f"dev-{i}" for i in range(9)]
    participants = {d: SecureParticipant(D) for d in ids}
    rng = np.random.default_rng(0)
    updates = {d: (rng.normal(0, 0.01, D).astype(np.float32), 1) for d in ids}
    probe = SecureCoordinator(np.zeros(D, np.float32), config).open_round(list(ids))
    gone = probe.groups[1].device_ids
    # Execute
    outcome, _ = run_secure_round(
        coord, participants, updates, dict.fromkeys(gone, Stage.ADVERTISE_KEYS)
    )
    # Assert: the one aborted group is named (before: the bare reason)
    (reason,) = outcome.measurements["abort_reasons"]
    assert reason.startswith("group 2 of 3: "), reason
