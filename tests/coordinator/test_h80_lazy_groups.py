"""Opening a grouped secure round does no per-group protocol work; a group is planned when it
is first asked for.

`SecureRegistry.open_round` planned every group on the event loop: two public-seed PRG calls
(graph and rotation), a `SecAggServer` (its graph) and a round digest (SHA-256 over the
packed S_r) per group, about 0.9-1.8 s at 30,000 devices in groups of 3 (scratch measurement,
2-core dev machine, 2026-11-29). Now the round plans one group of each distinct size at once
(so a plan the service cannot run is still refused when the round opens), and every other
group when its first request (setup, upload, a stage close) comes. Work is counted here
(calls), not timed; the bytes and digests each device sees are those of the eager plans.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator, _coordinator, _round, make_plan
from coordinator.service._secagg_routes import SecureRegistry, stage_cap
from protocol.secagg import SecAggServer, Stage, _plan, model_digest

D = 20_000


class _Counted:
    """Counts calls of a module function it replaces."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kw)


class _Work:
    """Per-group planning work: public seeds, SecAgg servers, round digests."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seeds = _Counted(_coordinator.public_seed)
        self.digests = _Counted(_plan.round_digest)
        self.servers = 0
        work = self

        class CountedServer(SecAggServer):
            def __init__(self, *a: Any, **kw: Any) -> None:
                work.servers += 1
                super().__init__(*a, **kw)

        monkeypatch.setattr(_coordinator, "public_seed", self.seeds)
        monkeypatch.setattr(_plan, "round_digest", self.digests)
        monkeypatch.setattr(_round, "SecAggServer", CountedServer)

    def counts(self) -> tuple[int, int, int]:
        return self.seeds.calls, self.servers, self.digests.calls


def _config(group_size: int = 3) -> SecureConfig:
    return SecureConfig(coord_fraction=0.05, group_size=group_size, seed=80)


def _registry(n: int, group_size: int = 3) -> tuple[SecureRegistry, list[str]]:
    registry = SecureRegistry(SecureCoordinator(np.zeros(D, np.float32), _config(group_size)))
    return registry, [f"dev-{i:04d}" for i in range(n)]


def test_opening_a_round_of_1000_groups_plans_one_group_per_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: 1000 groups of 3, the last of 4 (two distinct sizes)
    registry, ids = _registry(3001)
    work = _Work(monkeypatch)
    # Execute
    task = registry.open_round(ids, 5)
    # Assert: the groups seed (1), and per distinct size a graph and a rotation seed, a
    # server and a digest; before, 2 seeds, a server and a digest for each of the 1000 groups
    assert len(task.groups) == 1000
    seeds, servers, digests = work.counts()
    assert (seeds, servers, digests) == (1 + 2 * 2, 2, 2)


def test_a_groups_first_request_plans_that_group_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    registry, ids = _registry(300)
    task = registry.open_round(ids, 5)
    work = _Work(monkeypatch)
    members = task.members[41]
    # Execute: every member of group 41 asks for its setup
    answers = [registry.setup(5, d) for d in members]
    # Assert: one group planned (its rotation seed and the round's graph seed, a server, a
    # digest), once
    assert work.counts() == (2, 1, 1)
    assert {a[:2] for a in answers} == {answers[0][:2]}


@pytest.mark.parametrize(("group_size", "n"), [(3, 301), (5, 23), (7, 30)])
def test_every_device_sees_the_eager_plan_and_digest(group_size: int, n: int) -> None:
    # Prepare: groups of 3, 5 and 7 (7 has a Harary graph below the complete one), the last
    # group with the remainder
    registry, ids = _registry(n, group_size)
    coord = registry.coordinator
    task = registry.open_round(ids, 7)
    for g, members in enumerate(task.members):
        # the plan built alone, as open_round built every group's before
        alone = make_plan(coord.config, 7, len(members), D, task.indices.copy(), (), g)
        digest = alone.protocol_params(model_digest(coord.params)).digest
        for node, d in enumerate(members):
            # Execute
            body, got_digest, got_node = registry.setup(7, d)
            # Assert
            assert body == alone.to_bytes()
            assert got_digest == digest
            assert got_node == node


def test_stage_caps_are_those_of_every_plan() -> None:
    # Prepare: groups of 5 and one of 8 (a wider degree and ring)
    registry, ids = _registry(23, 5)
    registry.open_round(ids, 3)
    # Execute: every plan (this builds every group)
    plans = registry.plans(3)
    # Assert
    for s in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK):
        assert registry.upload_cap(3, s) == stage_cap(plans, s)


def test_a_plan_no_group_can_run_is_still_refused_at_open() -> None:
    # Prepare: a fixed threshold of 2 is a majority of a group of 3's 2 neighbours, not of
    # the last group's (of 5) 4: the 6 groups of 3 could run, the last cannot
    config = SecureConfig(coord_fraction=0.05, group_size=3, seed=1, threshold=2)
    registry = SecureRegistry(SecureCoordinator(np.zeros(D, np.float32), config))
    ids = [f"dev-{i:04d}" for i in range(3 * 7 + 2)]
    # Execute / Assert
    with pytest.raises(ValueError, match="must exceed half the graph degree 4"):
        registry.open_round(ids, 1)
    assert not registry.has_round(1)
