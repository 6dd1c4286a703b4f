"""A SecAgg group never unmasks the sum of two survivors.

The server stops a stage with fewer than max(2, t) devices, and groups of 3 or 4 have t = 2,
so the server's own rule lets a group reach the unmask stage with two masked inputs. Their
sum, with a server colluding with one of the two, would be the other's update. It is never
unmasked: an honest device answers the unmask request only when at least t of its graph
neighbours (itself not counted) are listed alive, so an unmask needs t + 1 >= 3 survivors.
These tests pin that down for groups of 3 and 4 (docs/secure-aggregation.md, "Threat model").
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator
from coordinator.service._secagg_routes import _ORDER, SecureRegistry
from protocol.secagg import RoundAborted
from sdk.secure import SecureParticipant

D = 40


def _run(n: int, drop: set[str]) -> tuple[SecureRegistry, list[str]]:
    """One group of n devices; those in `drop` leave before their masked input. Returns the
    registry after the unmask stage and the devices that refused to unmask."""
    config = SecureConfig(coord_fraction=1.0, value_bits=16, sketch=False, seed=5)
    reg = SecureRegistry(SecureCoordinator(np.zeros(D, np.float32), config))
    ids = [f"dev-{i}" for i in range(n)]
    reg.open_round(ids, 1)
    rng = np.random.default_rng(80)
    sessions = {}
    for d in ids:
        plan, digest, node = reg.setup(1, d)
        sessions[d] = SecureParticipant(D).join(plan, digest, reg.coordinator.params, node)
    for d in ids:
        reg.upload(1, _ORDER[0], d, sessions[d].advertise())
    for d in ids:
        down = reg.download(1, _ORDER[0], d)
        assert down is not None
        reg.upload(1, _ORDER[1], d, sessions[d].share_keys(down))
    live = [d for d in ids if d not in drop]
    for d in live:
        down = reg.download(1, _ORDER[1], d)
        assert down is not None
        update = (rng.standard_normal(D) * 0.02).astype(np.float32)
        reg.upload(1, _ORDER[2], d, sessions[d].masked_input(down, update, 1, rng))
    if drop:
        reg.close_stage(1, _ORDER[2])  # the masked-input deadline
    refused = []
    for d in live:
        down = reg.download(1, _ORDER[2], d)
        assert down is not None  # the server's rule (max(2, t) = 2) let the group go on
        try:
            body = sessions[d].unmask(down)
        except RoundAborted as exc:
            assert "live neighbours, threshold is 2" in str(exc)
            refused.append(d)
            continue
        reg.upload(1, _ORDER[3], d, body)
    return reg, refused


@pytest.mark.parametrize(("n", "drop"), [(3, {"dev-0"}), (4, {"dev-1", "dev-3"})])
def test_two_survivors_refuse_to_unmask_and_nothing_is_unmasked(n: int, drop: set[str]) -> None:
    # Prepare / Execute: a group of 3 (or 4) is left with two masked inputs
    reg, refused = _run(n, drop)
    task = reg._rounds[1].task
    assert task.groups[0].masked_inputs == 2
    out = reg.finish(1)
    # Assert: both survivors refused; no sum was unmasked, nothing was published
    assert len(refused) == 2
    assert task.groups[0].unmasked is None
    assert not out.committed and out.contributors == [] and not np.any(out.update)


def test_three_survivors_of_four_unmask() -> None:
    reg, refused = _run(4, {"dev-2"})
    out = reg.finish(1)
    assert refused == [] and out.committed and len(out.contributors) == 3
