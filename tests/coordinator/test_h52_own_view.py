"""A device reading a round's status gets measurements naming no other device of the round
(`_own_view`, docs/http-api.md "Round status and bandwidth"). Dict keys, list items and dict
values equal to another device's id were left out; what was left of a structure that names a
device another way was not: a `[device, score]` pair kept the score, a `{"device": id,
"norm": x}` record in a list kept the norm, and a message with the id inside it ("report from
<id> ...", as an aborted close stores in `error`) was kept whole."""

from __future__ import annotations

from coordinator.service.rounds import _own_view

ME, A, B = "0" * 31 + "1", "a" * 32, "b" * 32
COHORT = frozenset({ME, A, B})


def test_a_pair_or_record_naming_another_device_is_left_out_whole() -> None:
    # Prepare: per-device figures as pairs and as records in lists (tuples as the aggregator
    # built them, lists as they read back from the store)
    meas = {
        "scores": [(A, 0.9), [ME, 0.1], [B, 0.4]],
        "reports": [{"device": A, "norm": 3.5}, {"device": ME, "norm": 1.0}],
        "worst": [B, 12.0],
    }
    # Execute
    view = _own_view(meas, COHORT, ME)
    # Assert: only the caller's entries are left, and no figure of another device
    assert view == {"scores": [[ME, 0.1]], "reports": [{"device": ME, "norm": 1.0}]}


def test_a_message_naming_another_device_is_left_out() -> None:
    # Prepare
    meas = {
        "error": f"ValueError('invalid weight -1.0 from {A}')",
        "notes": [f"device {B} dropped", f"device {ME} late", "2 groups aborted"],
        "abandoned": "2 reports < min_reports 3",
    }
    # Execute
    view = _own_view(meas, COHORT, ME)
    # Assert: strings naming only the caller, or no device, stay
    assert view == {
        "notes": [f"device {ME} late", "2 groups aborted"],
        "abandoned": "2 reports < min_reports 3",
    }


def test_lists_of_ids_and_maps_keyed_by_id_keep_the_callers_entries() -> None:
    # Prepare: the structures the aggregators really write (secure dropped, krum selected,
    # anomaly norms, a screen's dropped scores), and an id from another round (kept)
    outsider = "c" * 32
    meas = {
        "dropped": [A, ME],
        "selected": [B],
        "norms": {A: 2.0, ME: 1.0},
        "inner": {"dropped": {B: 0.1}, "kept": 2, "worst": A, "seen": outsider},
        "contributors": 2,
    }
    # Execute
    view = _own_view(meas, COHORT, ME)
    # Assert
    assert view == {
        "dropped": [ME],
        "selected": [],
        "norms": {ME: 1.0},
        "inner": {"dropped": {}, "kept": 2, "seen": outsider},
        "contributors": 2,
    }
