"""A tick's `close_due` and a status request do not look at every SecAgg group.

The service calls `SecureRegistry.close_due` at every tick and `stage_counts` and
`current_stage` for every round status; each looked at every group of the round (about 1 s a
tick at 333,000 groups: scratch measurement on the 2-core dev machine, 2026-11-29). The
registry now keeps the upload counts and the number of groups at each stage as groups
change, and two min-queues (stage start, latest upload) from which `close_due` takes only the
groups whose deadline may have passed. Work is counted here (groups looked at), not timed;
a seeded hypothesis property drives a round through uploads, drops, aborts, stage closes and
deadlines and checks each answer against the scan of every group it replaces.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.secure import SecureConfig, SecureCoordinator
from coordinator.service._secagg_routes import _ORDER, SecureRegistry, _Group
from protocol.secagg import SecAggError, Stage
from sdk.secure import SecureParticipant, SecureSession

D = 40


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Touched(list[_Group]):
    """A round's group list that counts the groups read from it."""

    def __init__(self, groups: list[_Group]) -> None:
        super().__init__(groups)
        self.n = 0

    def __getitem__(self, i: Any) -> Any:
        self.n += 1
        return super().__getitem__(i)

    def __iter__(self) -> Any:
        self.n += len(self)
        return super().__iter__()


def _registry(
    n: int, clock: _Clock, timeout: float | None = None, idle: float | None = None
) -> SecureRegistry:
    config = SecureConfig(coord_fraction=0.25, group_size=3, seed=11, sketch=False)
    reg = SecureRegistry(SecureCoordinator(np.zeros(D, np.float32), config), clock, timeout, idle)
    reg.open_round([f"dev-{i:04d}" for i in range(n)], 1)
    return reg


def _touched(reg: SecureRegistry) -> _Touched:
    entry = reg._rounds[1]
    entry.groups = _Touched(entry.groups)
    return entry.groups


def test_a_tick_with_nothing_due_looks_at_no_group() -> None:
    # Prepare: 100 groups, their stages opened 10 s ago
    clock = _Clock()
    reg = _registry(300, clock)
    clock.t += 10.0
    touched = _touched(reg)
    # Execute
    closed = [reg.close_due(1, 30.0, 5.0) for _ in range(5)]
    # Assert
    assert closed == [0] * 5
    assert touched.n == 0


def test_a_tick_looks_only_at_the_groups_it_closes() -> None:
    # Prepare: 100 groups; 5 s in, one device of each of 4 groups advertises its keys, and
    # then those groups go quiet
    clock = _Clock()
    reg = _registry(300, clock)
    groups = reg._rounds[1].groups
    quiet = [groups[g].sr.device_ids[0] for g in (3, 50, 51, 99)]
    fleet = _Fleet(reg, quiet)
    clock.t += 5.0
    for k in range(len(quiet)):
        fleet.upload(k, retry=False)
    touched = _touched(reg)
    clock.t += 5.0
    # Execute: idle for 2 s is due in those 4 groups only
    closed = reg.close_due(1, 30.0, 2.0)
    # Assert: each aborted (one key advertised, the threshold is 2); no other group looked at
    assert closed == 4 and touched.n <= 3 * 4
    assert len(reg.abort_reasons(1)) == 4
    touched.n = 0
    assert reg.close_due(1, 30.0, 2.0) == 0 and touched.n == 0
    clock.t += 20.0
    assert reg.close_due(1, 30.0, 2.0) == 96 and reg.ready(1)
    assert len(reg.abort_reasons(1)) == 100


def test_status_looks_at_no_group() -> None:
    clock = _Clock()
    reg = _registry(300, clock)
    touched = _touched(reg)
    assert reg.stage_counts(1) == {str(s): 0 for s in _ORDER}
    assert reg.current_stage(1) == Stage.ADVERTISE_KEYS
    assert not reg.ready(1)
    assert touched.n == 0


# -- equivalence with the scan of every group ----------------------------------------------


def _scan_counts(reg: SecureRegistry) -> dict[str, int]:
    out = {str(s): 0 for s in _ORDER}
    for grp in reg._rounds[1].groups:
        for s, devs in grp.uploaded.items():
            out[str(s)] += len(devs)
    return out


def _scan_stage(reg: SecureRegistry) -> Stage | None:
    live = [g.stage for g in reg._rounds[1].groups if g.stage is not None]
    return min(live, key=_ORDER.index) if live else None


def _scan_due(reg: SecureRegistry, now: float, timeout: float, idle: float | None) -> set[int]:
    return {
        i
        for i, g in enumerate(reg._rounds[1].groups)
        if g.stage is not None and SecureRegistry._due(g, now, timeout, idle)
    }


def _state(reg: SecureRegistry) -> list[tuple[frozenset[Stage], str, float, float | None]]:
    return [
        (frozenset(g.closed), g.aborted, g.stage_started, g.last_upload)
        for g in reg._rounds[1].groups
    ]


class _Fleet:
    """Devices that upload their next stage when asked, if they can."""

    def __init__(self, reg: SecureRegistry, ids: list[str]) -> None:
        self.reg = reg
        self.ids = ids
        self.sessions: dict[str, SecureSession] = {}
        self.next: dict[str, int] = {}
        self.bodies: dict[tuple[str, int], bytes] = {}
        for d in self.ids:
            plan, digest, node = reg.setup(1, d)
            params = reg.coordinator.params
            self.sessions[d] = SecureParticipant(D).join(plan, digest, params, node)
            self.next[d] = 0

    def _body(self, d: str, i: int) -> bytes | None:
        if (d, i) in self.bodies:
            return self.bodies[(d, i)]
        s = self.sessions[d]
        if i == 0:
            body = s.advertise()
        else:
            down = self.reg.download(1, _ORDER[i - 1], d)
            if down is None:
                return None
            if i == 1:
                body = s.share_keys(down)
            elif i == 2:
                update = np.full(D, 0.01 * (1 + self.ids.index(d)), np.float32)
                body = s.masked_input(down, update, 1, np.random.default_rng(7))
            else:
                body = s.unmask(down)
        self.bodies[(d, i)] = body
        return body

    def upload(self, k: int, retry: bool) -> None:
        d = self.ids[k % len(self.ids)]
        i = self.next[d] - 1 if retry and self.next[d] > 0 else self.next[d]
        if i >= len(_ORDER):
            return
        try:
            body = self._body(d, i)
            if body is not None:
                self.reg.upload(1, _ORDER[i], d, body)
                self.next[d] = max(self.next[d], i + 1)
        except (SecAggError, PermissionError):
            self.next[d] = len(_ORDER)  # refused or aborted: this device is out (a drop)


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.0, 7.0, 12.0])),
        st.tuples(st.just("upload"), st.integers(0, 11), st.booleans()),
        # every device uploads its next stage but those in the mask (they drop out now)
        st.tuples(st.just("all"), st.frozensets(st.integers(0, 11), max_size=2)),
        st.tuples(st.just("all"), st.just(frozenset[int]())),
        st.tuples(st.just("due"), st.sampled_from([-1.0, 3.0, 10.0]), st.sampled_from([None, 1.5])),
        # what the service closes for every group at once: unmask (finish), and advertise
        st.tuples(st.just("close"), st.sampled_from([Stage.ADVERTISE_KEYS, Stage.UNMASK])),
    ),
    min_size=4,
    max_size=30,
)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    n=st.integers(9, 12),
    timeouts=st.sampled_from([(None, None), (10.0, None), (10.0, 1.5)]),
    ops=_OPS,
)
def test_the_kept_answers_are_those_of_a_scan_of_every_group(
    n: int, timeouts: tuple[float | None, float | None], ops: list[tuple[Any, ...]]
) -> None:
    # Prepare: 3 or 4 groups (groups of 3, the last with the remainder), devices that
    # upload (or retry), drop out (never asked), and groups aborted by too few uploads
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
            reg.close_stage(1, op[1])
        else:
            _, timeout, idle = op
            want = _scan_due(reg, clock.t, timeout, idle)
            before = _state(reg)
            closed = reg.close_due(1, timeout, idle)
            after = _state(reg)
            # Assert: it closed exactly the groups a scan finds due, each once
            assert closed == len(want)
            assert {i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b} == (
                want
            )
        # Assert: the kept answers are the scan's, after every step
        assert reg.stage_counts(1) == _scan_counts(reg)
        assert reg.current_stage(1) == _scan_stage(reg)
        assert reg.ready(1) == (_scan_stage(reg) is None)
