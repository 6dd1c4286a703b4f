"""A device's view of a round's measurements (`_own_view`): a record naming another device
held as a dict value is left out whole, as it is in a list. Before, `{"worst": {"device": id,
"norm": x}}` lost the id but kept the other device's norm."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.service.rounds import _own_view

ME, A, B = "0" * 31 + "1", "a" * 32, "b" * 32
COHORT = frozenset({ME, A, B})


def test_a_record_held_as_a_dict_value_is_left_out_whole() -> None:
    # Prepare
    meas = {
        "worst": {"device": A, "norm": 3.5},
        "mine": {"device": ME, "norm": 1.0},
        "inner": {"best": {"device": B, "cos": 0.9}, "kept": 2},
        "summary": {"clients": 3, "mean_norm": 2.0},
    }
    # Execute
    view = _own_view(meas, COHORT, ME)
    # Assert
    assert view == {
        "mine": {"device": ME, "norm": 1.0},
        "inner": {"kept": 2},
        "summary": {"clients": 3, "mean_norm": 2.0},
    }


def test_a_wrapper_level_naming_a_device_beside_nested_measurements_is_walked() -> None:
    # Prepare: a wrapper's measurements (with `inner`) that also name the worst device
    meas = {"anomaly": {"worst": A, "kept": 2, "inner": {"clients": 2}}}
    # Execute
    view = _own_view(meas, COHORT, ME)
    # Assert: the id goes, the round's figures stay
    assert view == {"anomaly": {"kept": 2, "inner": {"clients": 2}}}


_leaf = st.one_of(st.sampled_from([ME, A, B, "note", "x" * 40]), st.floats(0, 10), st.integers())
_tree: Any = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        # Keys naming another device (maps keyed by id) are filtered key by key, by design
        # (test_h52_own_view): here only values name other devices.
        st.dictionaries(st.sampled_from([ME, "k1", "k2", "device"]), inner, max_size=4),
    ),
    max_leaves=20,
)


def _flat_records(v: Any) -> list[dict[str, Any]]:
    """Every dict of plain values within `v`."""
    out: list[dict[str, Any]] = []
    if isinstance(v, dict):
        if not any(isinstance(x, dict | list | tuple) for x in v.values()):
            out.append(v)
        for x in v.values():
            out += _flat_records(x)
    elif isinstance(v, list):
        for x in v:
            out += _flat_records(x)
    return out


def _strings(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [s for k, x in v.items() for s in [str(k), *_strings(x)]]
    if isinstance(v, list):
        return [s for x in v for s in _strings(x)]
    return []


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.dictionaries(st.sampled_from(["m1", "m2", "m3"]), _tree, max_size=3))
def test_no_other_device_is_named_and_no_flat_record_of_one_survives(meas: Any) -> None:
    # Execute
    view = _own_view(meas, COHORT, ME)
    # Assert: the view names no other device, and every flat dict left below the top level
    # is one that named no other device in the measurements either (none was cut down), or
    # what is left of a wrapper level (a dict with nested values) once every nested entry was
    # dropped: its plain entries, as they were
    assert not any(s in (A, B) for s in _strings(view))
    below = [r for x in view.values() for r in _flat_records(x)]
    original = [r for x in meas.values() for r in _flat_records(x)]
    wrappers = [_plain_part(d) for x in meas.values() for d in _dicts(x) if d not in original]
    for r in below:
        if r:
            assert r in original or r in wrappers, r


def _dicts(v: Any) -> list[dict[str, Any]]:
    """Every dict within `v`."""
    if isinstance(v, dict):
        return [v, *(d for x in v.values() for d in _dicts(x))]
    if isinstance(v, list):
        return [d for x in v for d in _dicts(x)]
    return []


def _plain_part(d: dict[str, Any]) -> dict[str, Any]:
    """A wrapper level's plain entries that name no other device."""
    return {
        k: x for k, x in d.items() if not isinstance(x, dict | list | tuple) and x not in (A, B)
    }
