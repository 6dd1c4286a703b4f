"""A SecAgg group never unmasks the sum of two survivors.

Groups of 3 or 4 have t = 2, and the server's floor of max(2, t) devices a stage would let a
group reach the unmask stage with two masked inputs; since stop 49 the server also aborts a
stage close that leaves a device fewer than t live neighbours, so it stops them first. Their
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


def _run(n: int, drop: set[str]) -> tuple[SecureRegistry, list[str], str | None]:
    """One group of n devices; those in `drop` leave before their masked input. Returns the
    registry after the unmask stage, the devices that refused to unmask, and why the server
    aborted the group at the masked-input close, if it did."""
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
        try:
            down = reg.download(1, _ORDER[2], d)
        except RoundAborted as exc:  # the server saw no survivor could unmask (stop 49)
            return reg, refused, str(exc)
        assert down is not None
        try:
            body = sessions[d].unmask(down)
        except RoundAborted as exc:
            assert "live neighbours, threshold is 2" in str(exc)
            refused.append(d)
            continue
        reg.upload(1, _ORDER[3], d, body)
    return reg, refused, None


@pytest.mark.parametrize(("n", "drop"), [(3, {"dev-0"}), (4, {"dev-1", "dev-3"})])
def test_two_survivors_refuse_to_unmask_and_nothing_is_unmasked(n: int, drop: set[str]) -> None:
    # Prepare / Execute: a group of 3 (or 4) is left with two masked inputs
    reg, refused, aborted = _run(n, drop)
    task = reg._rounds[1].task
    assert task.groups[0].masked_inputs == 2
    out = reg.finish(1)
    # Assert: the server aborts the group at the masked-input close, as each survivor has
    # fewer than t = 2 live neighbours (before stop 49 it opened the unmask stage and both
    # survivors refused it); no sum was unmasked, nothing was published
    assert refused == [] and aborted is not None
    assert "fewer than t=2 live neighbours at the close of masked input" in aborted
    assert task.groups[0].unmasked is None
    assert not out.committed and out.contributors == [] and not np.any(out.update)


def test_three_survivors_of_four_unmask() -> None:
    reg, refused, aborted = _run(4, {"dev-2"})
    out = reg.finish(1)
    assert refused == [] and aborted is None
    assert out.committed and len(out.contributors) == 3
