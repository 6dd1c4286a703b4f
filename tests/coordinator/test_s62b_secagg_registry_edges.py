"""`SecureRegistry` edges (helper s62b): a round id is open once, and closing the unmask stage
cuts short the groups behind.

`SecureRegistry.open_round` stored the new round under its id whatever was there, so opening
a round of an id already open replaced that round: its groups' SecAgg servers (key
material, shares) and stage bookkeeping were gone, and its devices' next requests reached
the new round instead. The service's round ids are unique (the store's), but the registry is
a public building block: it refuses now, and the open round goes on as before.

`close_stage(UNMASK)` is the round's deadline (`finish` closes the stage the same way); a
group behind was left running by it, and is aborted now.
"""

from __future__ import annotations

import pytest

from protocol.secagg import RoundAborted, Stage

from .test_s61d_secagg_registry_refusals import RID, _Round


def test_opening_a_round_id_already_open_is_refused_and_the_round_goes_on() -> None:
    """Fails before the fix: the second `open_round` replaced round 7 mid-protocol (the
    registry's entry, the keys the devices advertised included)."""
    # Prepare: round 7 is past advertise-keys
    r = _Round()
    r.run(Stage.ADVERTISE_KEYS)
    before = r.state()
    entry = r.reg._rounds[RID]
    counter = r.coord.round_id
    # Execute
    with pytest.raises(ValueError, match=f"secure round {RID} is already open"):
        r.reg.open_round([f"other-{i}" for i in range(4)], RID)
    # Assert: the round is the one it was, with its counter, and it still commits
    assert r.reg._rounds[RID] is entry and r.state() == before
    assert r.coord.round_id == counter
    assert not r.reg.in_round(RID, "other-0")
    for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK):
        r.run(stage)
    out = r.reg.finish(RID)
    assert out.committed and sorted(out.contributors) == r.devs


def test_the_default_round_id_is_checked_before_it_is_taken() -> None:
    """Fails before the fix: the coordinator's next id (its counter + 1) can be a round
    opened earlier with an explicit id; the default-id open replaced that round too."""
    # Prepare: round 7 open; then round 6 opened by id, so the coordinator's next is 7
    r = _Round()
    r.reg.open_round([f"six-{i}" for i in range(3)], RID - 1)
    assert r.coord.round_id == RID - 1
    before = r.state()
    # Execute + Assert: refused, the counter left as it was
    with pytest.raises(ValueError, match=f"secure round {RID} is already open"):
        r.reg.open_round([f"other-{i}" for i in range(4)])
    assert r.coord.round_id == RID - 1 and r.state() == before
    # Once round 7 is discarded, the default id opens it again
    r.reg.discard(RID)
    task = r.reg.open_round([f"other-{i}" for i in range(4)])
    assert task.round_id == RID and r.reg.in_round(RID, "other-0")


def test_closing_the_unmask_stage_cuts_short_the_groups_behind() -> None:
    """Fails before the fix: `close_stage(UNMASK)` marked the unmask stage closed in a group
    still taking advertisements and left it running: its devices were still told to join
    (`joinable`), their uploads taken, and past its masked-input close they would have been
    asked to unmask for an unmask stage already closed."""
    # Prepare: two groups of five; A reaches its unmask stage and answers, B has 3 keys
    r = _Round(10, group_size=5)
    a, b = (list(ids) for ids in r.task.members)
    r.run(Stage.ADVERTISE_KEYS, a + b[:3])
    for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK):
        r.run(stage, a)
    gb = r.task.groups[r.task.group_of[b[0]]]
    assert r.reg.joinable(RID, b[3]) and gb.stage == Stage.ADVERTISE_KEYS
    # Execute: the round's unmask deadline
    r.reg.close_stage(RID, Stage.UNMASK)
    # Assert: B is aborted, naming its stage; it takes nothing more, and the round is over
    (why,) = r.reg.abort_reasons(RID)
    assert why == "group 2 of 2: cut short in stage advertise-keys: the round's unmask stage closed"
    assert not r.reg.joinable(RID, b[3])
    with pytest.raises(RoundAborted, match="cut short in stage advertise-keys"):
        r.reg.upload(RID, Stage.ADVERTISE_KEYS, b[3], r.body(Stage.ADVERTISE_KEYS, b[3]))
    with pytest.raises(RoundAborted, match="cut short"):
        r.reg.download(RID, Stage.ADVERTISE_KEYS, b[0])
    assert r.reg.stage_counts(RID)[Stage.ADVERTISE_KEYS] == 8
    assert r.reg.current_stage(RID) is None and r.reg.ready(RID)
    assert r.reg.close_due(RID, 0.0) == 0 and gb.stage == Stage.ADVERTISE_KEYS
    # A's sum is the round's
    out = r.reg.finish(RID)
    assert out.committed and sorted(out.contributors) == sorted(a)
    assert out.aborted_groups == 1
