"""SecureRegistry: a refused `close_stage` changes nothing, and `pending` / `abort_reasons` are
kept as groups change instead of scanning every group.

`close_stage` with a stage ahead of a group's current one marked the stage closed, reset the
stage clock and emptied the devices expected in it before SecAgg raised `WrongStage` (the
group's devices were then refused as "no longer in stage"). The service never does this; the
registry must still not change on an error. `pending` and `abort_reasons` looked at every
group (10,000 for a cohort of 30,000 in groups of 3); they are kept now, and a seeded
hypothesis property ties them (and the refused closes) to the scan of every group.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.secure import group_reason
from coordinator.service._secagg_routes import _ORDER, SecureRegistry
from protocol.secagg import Stage, WrongStage

from .test_h76_registry_scans import _Clock, _Fleet, _registry, _scan_counts, _touched


def _snapshot(reg: SecureRegistry) -> list[Any]:
    entry = reg._rounds[1]
    groups = [
        (
            frozenset(g.closed),
            g.aborted,
            g.stage_started,
            g.last_upload,
            frozenset(g.expected),
            {s: frozenset(d) for s, d in g.uploaded.items()},
            g.sr.stage if g.rounds.built(g.index) else None,  # type: ignore[attr-defined]
        )
        for g in entry.groups
    ]
    return [groups, dict(entry.at_stage), dict(entry.uploads)]


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT])
def test_closing_a_stage_ahead_of_a_group_changes_nothing(stage: Stage) -> None:
    # Prepare: 3 groups at advertise-keys; one device of group 0 advertised
    clock = _Clock()
    reg = _registry(9, clock)
    fleet = _Fleet(reg, [f"dev-{i:04d}" for i in range(9)])
    first = reg._rounds[1].groups[0].sr.device_ids[0]
    fleet.upload(fleet.ids.index(first), retry=False)
    before = _snapshot(reg)
    clock.t += 1.0
    # Execute
    with pytest.raises(WrongStage, match="advertise-keys"):
        reg.close_stage(1, stage)
    # Assert: nothing changed, and the round still runs to the end
    assert _snapshot(reg) == before
    for _ in range(4):
        for k in range(9):
            fleet.upload(k, retry=False)
    assert reg.ready(1) and not reg.abort_reasons(1)
    assert reg.finish(1).committed


def test_closing_a_stage_some_groups_are_behind_closes_none() -> None:
    # Prepare: group 0 reached share-keys (all advertised), groups 1 and 2 did not
    clock = _Clock()
    reg = _registry(9, clock)
    fleet = _Fleet(reg, [f"dev-{i:04d}" for i in range(9)])
    for d in reg._rounds[1].groups[0].sr.device_ids:
        fleet.upload(fleet.ids.index(d), retry=False)
    assert reg._rounds[1].groups[0].stage == Stage.SHARE_KEYS
    before = _snapshot(reg)
    # Execute / Assert: group 0 could close it, groups 1 and 2 cannot: no group closes it
    with pytest.raises(WrongStage):
        reg.close_stage(1, Stage.SHARE_KEYS)
    assert _snapshot(reg) == before


def test_pending_and_abort_reasons_look_at_no_group() -> None:
    # Prepare: 100 groups; 4 of them aborted at advertise-keys
    clock = _Clock()
    reg = _registry(300, clock)
    groups = reg._rounds[1].groups
    quiet = [groups[g].sr.device_ids[0] for g in (3, 50, 51, 99)]
    fleet = _Fleet(reg, quiet)
    for k in range(len(quiet)):
        fleet.upload(k, retry=False)
    clock.t += 5.0
    assert reg.close_due(1, 30.0, 2.0) == 4
    touched = _touched(reg)
    # Execute
    pending = {s: reg.pending(1, s) for s in _ORDER}
    reasons = reg.abort_reasons(1)
    # Assert
    assert touched.n == 0
    assert pending[Stage.ADVERTISE_KEYS] == (0, 96 * 3)
    assert len(reasons) == 4 and all("advertised keys" in r for r in reasons)


# -- equivalence with the scan of every group ----------------------------------------------


def _scan_pending(reg: SecureRegistry, stage: Stage) -> tuple[int, int]:
    done = expected = 0
    for grp in reg._rounds[1].groups:
        if stage in grp.closed or grp.aborted:
            continue
        done += len(grp.uploaded.get(stage, ()))
        expected += len(grp.expected)
    return done, expected


def _scan_reasons(reg: SecureRegistry) -> list[str]:
    groups = reg._rounds[1].groups
    return [group_reason(g.index, len(groups), g.aborted) for g in groups if g.aborted]


_MORE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.0, 7.0, 12.0])),
        st.tuples(st.just("upload"), st.integers(0, 11), st.booleans()),
        st.tuples(st.just("all"), st.frozensets(st.integers(0, 11), max_size=2)),
        st.tuples(st.just("all"), st.just(frozenset[int]())),
        st.tuples(st.just("due"), st.sampled_from([-1.0, 3.0, 10.0]), st.sampled_from([None, 1.5])),
        # the service's closes (advertise-keys, and unmask at finish), and what it never
        # does: close a stage that may be ahead of some group's
        st.tuples(st.just("close"), st.sampled_from(_ORDER)),
    ),
    min_size=4,
    max_size=30,
)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    n=st.integers(9, 12),
    timeouts=st.sampled_from([(None, None), (10.0, None), (10.0, 1.5)]),
    ops=_MORE_OPS,
)
def test_kept_pending_and_reasons_are_those_of_a_scan(
    n: int, timeouts: tuple[float | None, float | None], ops: list[tuple[Any, ...]]
) -> None:
    # Prepare: 3 or 4 groups (as in test_h76_registry_scans); devices that upload, retry,
    # drop out; groups that abort; stage closes in and out of order, deadlines
    clock = _Clock()
    reg = _registry(n, clock, *timeouts)
    fleet = _Fleet(reg, [f"dev-{i:04d}" for i in range(n)])
    for op in ops:
        # Execute
        if op[0] == "wait":
            clock.t += op[1]
        elif op[0] == "upload":
            fleet.upload(op[1], op[2])
        elif op[0] == "all":
            for k in range(n):
                if k not in op[1]:
                    fleet.upload(k, retry=False)
        elif op[0] == "close":
            before = _snapshot(reg)
            try:
                reg.close_stage(1, op[1])
            except WrongStage:
                # Assert: a refused close changed nothing
                assert _snapshot(reg) == before
        else:
            reg.close_due(1, op[1], op[2])
        # Assert: the kept answers are the scan's, after every step
        for s in _ORDER:
            assert reg.pending(1, s) == _scan_pending(reg, s)
        assert reg.abort_reasons(1) == _scan_reasons(reg)
        assert reg.stage_counts(1) == _scan_counts(reg)
