"""`SecureRegistry` edges (helper s62b): a round id is open once.

`SecureRegistry.open_round` stored the new round under its id whatever was there, so opening
a round of an id already open replaced that round: its groups' SecAgg servers (key
material, shares) and stage bookkeeping were gone, and its devices' next requests reached
the new round instead. The service's round ids are unique (the store's), but the registry is
a public building block: it refuses now, and the open round goes on as before.
"""

from __future__ import annotations

import pytest

from protocol.secagg import Stage

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
