"""An upload to a secure round costs the same however many SecAgg groups the round has.

Every stage upload asked `SecureRegistry.ready` (does the round close now?) and the upload
cap (`stage_cap` over every group's plan); both looked at every group. With a cohort of
30,000 in groups of 3 (10,000 groups) that was 4.6 ms and 3 ms of the event loop per upload
(a scratch measurement on the 2-core dev machine, 2026-11-29), for 120,000 uploads a round:
quadratic in the cohort. The registry now keeps a count of the groups still running and the
round's stage caps, both set when the round opens."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator
from coordinator.service import _secagg_routes
from coordinator.service._secagg_routes import SecureRegistry, _Group, stage_cap
from coordinator.service.secure import SECURE_STAGES
from protocol.secagg import Stage
from sdk.secure import SecureParticipant

D = 300


def _registry(n: int, group_size: int = 3) -> tuple[SecureRegistry, list[str]]:
    config = SecureConfig(coord_fraction=0.1, group_size=group_size, seed=3)
    registry = SecureRegistry(SecureCoordinator(np.zeros(D, np.float32), config))
    ids = [f"dev-{i:04d}" for i in range(n)]
    registry.open_round(ids, 1)
    return registry, ids


class _Looks:
    """Counts how often any group's stage is looked at."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        real = _Group.stage.fget
        assert real is not None

        def counted(grp: _Group) -> Stage | None:
            self.n += 1
            return real(grp)

        monkeypatch.setattr(_Group, "stage", property(counted))


def test_ready_does_not_look_at_every_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 100 groups
    registry, _ = _registry(300)
    looks = _Looks(monkeypatch)
    # Execute / Assert
    assert not registry.ready(1)
    assert looks.n <= 2


def test_the_upload_cap_does_not_look_at_every_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, _ = _registry(300)
    want = {s: stage_cap(registry.plans(1), s) for s in SECURE_STAGES}
    calls = []
    monkeypatch.setattr(_secagg_routes, "stage_cap", lambda *a: calls.append(a) or 0)
    for s in SECURE_STAGES:
        assert registry.upload_cap(1, s) == want[s]
    assert calls == []
    with pytest.raises(LookupError):
        registry.upload_cap(2, Stage.ADVERTISE_KEYS)


def test_ready_follows_every_way_a_group_finishes() -> None:
    # Prepare: 4 groups of 3; group 0 runs to the end, group 1 aborts at advertise-keys (no
    # one advertised), the others are cut off by the round's finish
    registry, _ = _registry(12)
    task = registry._rounds[1].task
    sessions = {}
    g0 = task.groups[0].device_ids
    for d in g0:
        plan, digest, node = registry.setup(1, d)
        sessions[d] = SecureParticipant(D).join(plan, digest, registry.coordinator.params, node)
    for d in g0:
        registry.upload(1, Stage.ADVERTISE_KEYS, d, sessions[d].advertise())
    # the others abort (nobody advertised); group 0 has closed the stage already
    registry.close_stage(1, Stage.ADVERTISE_KEYS)
    assert registry.abort_reasons(1) and len(registry.abort_reasons(1)) == 3
    assert not registry.ready(1)
    for d in g0:
        down = registry.download(1, Stage.ADVERTISE_KEYS, d)
        assert down is not None
        registry.upload(1, Stage.SHARE_KEYS, d, sessions[d].share_keys(down))
    for d in g0:
        down = registry.download(1, Stage.SHARE_KEYS, d)
        assert down is not None
        update = np.full(D, 0.01, np.float32)
        body = sessions[d].masked_input(down, update, 1, np.random.default_rng(0))
        registry.upload(1, Stage.MASKED_INPUT, d, body)
    assert not registry.ready(1)
    for d in g0:
        down = registry.download(1, Stage.MASKED_INPUT, d)
        assert down is not None
        registry.upload(1, Stage.UNMASK, d, sessions[d].unmask(down))
    # Assert: ready exactly when current_stage (which looks at every group) says so
    assert registry.ready(1) == (registry.current_stage(1) is None)
    assert registry.ready(1)  # group 0 done, groups 1-3 aborted
    out = registry.finish(1)
    assert out.committed and out.aborted_groups == 3 and registry.ready(1)


def test_ready_once_every_group_aborted_at_its_deadline() -> None:
    # Prepare: 3 groups, nobody uploads
    registry, _ = _registry(9)
    assert not registry.ready(1)
    # Execute: the advertise-keys deadline passes in every group
    registry.close_due(1, timeout_s=-1.0)
    # Assert
    assert registry.ready(1) and registry.current_stage(1) is None
    assert len(registry.abort_reasons(1)) == 3
    out = registry.finish(1)
    assert not out.committed and out.aborted_groups == 3
