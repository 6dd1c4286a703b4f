"""decode_state refuses any malformed blob with StateCodecError (the service's restore catches
ValueError-family errors only, and names the task when it does)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregators import StateCodecError, decode_state, encode_state
from coordinator.aggregators._backdoor import CollusionState, DeviceHistory
from coordinator.aggregators._state import _HEAD


def _blob(tree: Any, tail: bytes = b"") -> bytes:
    text = json.dumps(tree).encode()
    return _HEAD.pack(b"PLAS", 1, len(text)) + text + tail


@pytest.mark.parametrize(
    ("tree", "what"),
    [
        # float.fromhex raises OverflowError (an ArithmeticError) past float's range
        ({"t": "f", "v": "0x1p99999"}, "malformed 'f' node"),
        # a dataclass node whose fields are not an object: AttributeError on .items()
        ({"t": "dc", "c": "DeviceHistory", "f": [1]}, "malformed 'dc' node"),
    ],
)
def test_nodes_that_raised_other_errors_are_state_codec_errors(tree: Any, what: str) -> None:
    # Before, both escaped as OverflowError / AttributeError, past the service's restore
    # handler (KeyError, TypeError, ValueError), so a corrupt stored state crashed start-up
    # instead of naming the task whose state does not restore.
    with pytest.raises(StateCodecError, match=what):
        decode_state(_blob(tree))


def test_an_integer_past_json_s_digit_limit_is_a_state_codec_error() -> None:
    text = b"1" + b"0" * 5000  # Python's int parsing refuses > 4300 digits with ValueError
    blob = _HEAD.pack(b"PLAS", 1, len(text)) + text
    with pytest.raises(StateCodecError, match="does not parse"):
        decode_state(blob)


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(["0x1p99999", "-0x1.8p2000", "nan", "ff", "<f4", "|u1", "CollusionState"]),
)
_INTS = st.one_of(st.integers(-3, 40), st.sampled_from([2**40, 10**30, -(2**63)]))
_JUNK = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=2))


def _node(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Nodes of each type with the keys the decoder reads, each value well formed or not.
    kids = st.lists(children, max_size=3)
    return st.one_of(
        st.fixed_dictionaries({"t": st.just("f"), "v": _SCALARS}),
        st.fixed_dictionaries({"t": st.sampled_from(["tuple", "list"]), "v": kids | _JUNK}),
        st.fixed_dictionaries({"t": st.just("dict"), "k": kids | _JUNK, "v": kids | _JUNK}),
        st.fixed_dictionaries(
            {
                "t": st.just("nd"),
                "d": st.sampled_from(["<f4", "<f8", "|u1", ">f4", "O"]) | _JUNK,
                "s": st.lists(_INTS, max_size=3) | _JUNK,
                "o": _INTS | _JUNK,
                "n": _INTS | _JUNK,
            }
        ),
        st.fixed_dictionaries(
            {
                "t": st.just("ns"),
                "d": st.sampled_from(["<f4", "<i8", "O"]) | _JUNK,
                "v": st.sampled_from(["0000803f", "00", "zz"]) | _JUNK,
            }
        ),
        st.fixed_dictionaries(
            {
                "t": st.just("dc"),
                "c": st.sampled_from(["CollusionState", "DeviceHistory", "os"]) | _JUNK,
                "f": st.dictionaries(st.text(max_size=8), children, max_size=3) | kids | _JUNK,
            }
        ),
        st.dictionaries(st.sampled_from(["t", "v"]), _JUNK, max_size=2),
        kids,
    )


_TREES = st.recursive(_SCALARS, _node, max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(_TREES, st.binary(max_size=16))
def test_decode_state_raises_only_state_codec_error(tree: Any, tail: bytes) -> None:
    try:
        decode_state(_blob(tree, tail))
    except StateCodecError:
        pass


def test_round_trip_still_exact() -> None:
    import numpy as np

    state = (3, 0.25, {"m": np.arange(4, dtype=np.float32), 7: [float("nan"), -0.0]})
    back = decode_state(encode_state(state))
    assert back[0] == 3 and back[1] == 0.25
    np.testing.assert_array_equal(back[2]["m"], state[2]["m"])
    assert np.isnan(back[2][7][0]) and str(back[2][7][1]) == "-0.0"


def _tree_and_tail(blob: bytes) -> tuple[Any, bytes]:
    """An encoded state's JSON tree and the array bytes after it."""
    n = _HEAD.unpack_from(blob)[2]
    return json.loads(blob[_HEAD.size : _HEAD.size + n]), blob[_HEAD.size + n :]


def _history(**over: Any) -> dict[str, Any]:
    """A DeviceHistory node as encode_state writes it (empty arrays), `over` replacing fields."""
    good = DeviceHistory(np.zeros(0, np.int64), np.zeros(0, np.float32), 3)
    tree, tail = _tree_and_tail(encode_state(good))
    assert tail == b""
    return {**tree, "f": {**tree["f"], **over}}


@pytest.mark.parametrize(
    ("over", "what"),
    [
        ({"values": 1}, "DeviceHistory.values is not an array of float32: 1"),
        ({"indices": {"t": "list", "v": []}}, "DeviceHistory.indices is not an array of int64: []"),
        ({"last_round": "x"}, "DeviceHistory.last_round is not a int: 'x'"),
        ({"last_round": True}, "DeviceHistory.last_round is not a int: True"),
    ],
)
def test_a_dataclass_whose_fields_do_not_fit_is_refused(over: dict[str, Any], what: str) -> None:
    # Before, decode_state built DeviceHistory(indices=[], values=1, last_round='x') without a
    # word (helper-328's fuzzing), and the collusion filter failed later, outside the
    # restore's handler. A well-formed node still decodes.
    with pytest.raises(StateCodecError) as info:
        decode_state(_blob(_history(**over)))
    assert str(info.value) == what
    assert decode_state(_blob(_history())).last_round == 3


def test_a_collusion_state_of_wrong_kinds_inside_its_dicts_is_refused() -> None:
    # Prepare: a real collusion state (one history, one suspect) round-trips
    history = DeviceHistory(np.arange(2, dtype=np.int64), np.ones(2, np.float32), 1)
    good = CollusionState(2, {"d": history}, np.zeros(4, np.int32), {"d": 5}, None)
    back = decode_state(encode_state(good))
    assert isinstance(back, CollusionState) and back.suspects == {"d": 5}
    np.testing.assert_array_equal(back.histories["d"].indices, history.indices)
    tree, tail = _tree_and_tail(encode_state(good))
    # Execute / Assert: a suspect's last round a string; a history that is not one
    tree["f"]["suspects"]["v"] = ["soon"]
    with pytest.raises(StateCodecError, match=r"^CollusionState.suspects is not a dict of a s"):
        decode_state(_blob(tree, tail))
    tree, tail = _tree_and_tail(encode_state(good))
    tree["f"]["histories"]["v"] = [7]
    with pytest.raises(StateCodecError, match=r"^CollusionState.histories is not a dict of"):
        decode_state(_blob(tree, tail))
