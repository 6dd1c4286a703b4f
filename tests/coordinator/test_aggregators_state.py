"""Aggregator state to bytes and back: exact round trips, continued rounds, refused blobs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from compression import SparseUpdate
from coordinator.aggregators import (
    ClientUpdate,
    StateCodecError,
    build_aggregator,
    decode_state,
    encode_state,
)

D = 300


def _same(a: Any, b: Any) -> bool:
    """Equal trees, bit for bit (NaN equals NaN of the same bits; types must match)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex()
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if hasattr(a, "__dataclass_fields__"):
        return all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return bool(a == b)


_arrays = hnp.arrays(
    st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_]),
    hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | _arrays
    | st.floats(width=32).map(np.float32)
    | st.integers(-(2**63), 2**63 - 1).map(np.int64)
)
_trees = st.recursive(
    _leaves,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.lists(kids, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=6) | st.integers(0, 99), kids, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_trees)
def test_any_state_tree_round_trips_bit_for_bit(tree: Any) -> None:
    assert _same(decode_state(encode_state(tree)), tree)


def _round(rng: np.random.Generator, n: int = 8) -> list[ClientUpdate]:
    direction = rng.normal(0, 1, D).astype(np.float32)
    out = []
    for i in range(n):
        row = direction + rng.normal(0, 0.5, D).astype(np.float32)
        if i == 0:
            row = -5 * row  # one attacker, so the screens have something to do
        idx = np.sort(rng.choice(D, 60, replace=False)).astype(np.uint32)
        out.append(ClientUpdate(f"dev-{i}", SparseUpdate(idx, row[idx], D), float(10 + i)))
    return out


@pytest.mark.parametrize(
    "spec",
    [
        "cosfilter+geomed",
        "collusion:tau=0.3+normbound:q=0.9,init=1+fedavg",
        "normbound:q=0.5,init=0.3+bucket:3+geomed",
        "dp:clip=1,z=1.0,q=0.1,denom=10,delta=1e-5,seed=3+fedavg",
        "dp:z=1,population=1000,sample=50,quantile=0.5,count_std=5,seed=1+fedavg",
        "cclip:tau=auto,beta=0.9",
        "anomaly:min_cos=0,norm_ratio=3+median",
        "rlr:theta=3",
        "adam:lr=0.05+cosfilter+geomed",
        "avgm:0.9+dp:clip=1,z=1.0,seed=2+fedavg",
    ],
)
def test_a_restored_state_continues_exactly_like_the_original(spec: str) -> None:
    # Prepare: three rounds, then the state goes through bytes.
    rng = np.random.default_rng(0)
    rounds = [_round(rng) for _ in range(6)]
    proc = build_aggregator(spec).create(D)
    state = proc.initialize()
    for ups in rounds[:3]:
        state = proc.next(state, ups).state
    restored = decode_state(encode_state(state))

    # Execute: the same three further rounds from the original and from the restored state.
    fresh = build_aggregator(spec).create(D)  # a new process, as after a restart
    a, b = state, restored
    outs_a, outs_b = [], []
    for ups in rounds[3:]:
        oa, ob = proc.next(a, ups), fresh.next(b, ups)
        a, b = oa.state, ob.state
        outs_a.append(oa)
        outs_b.append(ob)

    # Assert: identical results and measurements (epsilon, clip norms, drops, ...).
    for oa, ob in zip(outs_a, outs_b, strict=True):
        assert oa.result.tobytes() == ob.result.tobytes()
        assert repr(oa.measurements) == repr(ob.measurements)
    assert _same(a, b)


def test_states_that_are_not_trees_of_known_types_are_refused() -> None:
    with pytest.raises(StateCodecError, match="not stored"):
        encode_state((1, object()))
    with pytest.raises(StateCodecError, match="not stored"):
        encode_state(np.zeros(2, dtype=np.complex64))


def _blob(tree_json: bytes, arrays: bytes = b"") -> bytes:
    return b"PLAS\x01" + len(tree_json).to_bytes(4, "little") + tree_json + arrays


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"", "blob of 0 bytes"),
        (b"XXXX\x01\x00\x00\x00\x00", "magic"),
        (b"PLAS\x01\xff\x00\x00\x00{}", "runs past"),
        (_blob(b"{x"), "does not parse"),
        (_blob(b'{"t":"evil"}'), "unknown state node"),
        (_blob(b'{"t":"dc","c":"Popen","f":{}}'), "not stored"),
        (_blob(b'{"t":"nd","d":"|O","s":[1],"o":0,"n":8}', bytes(8)), "not stored"),
        (_blob(b'{"t":"dict","k":[1,2],"v":[3]}'), "unequal"),
    ],
)
def test_malformed_blobs_get_a_typed_error(blob: bytes, match: str) -> None:
    with pytest.raises(StateCodecError, match=match):
        decode_state(blob)


def test_an_array_whose_declared_size_runs_past_the_blob_is_refused_before_allocating() -> None:
    # Prepare: a valid blob, then its array node claims a billion floats.
    forged = _blob(b'{"t":"nd","d":"<f4","s":[1000000000],"o":0,"n":4000000000}', bytes(16))
    # Execute + Assert
    with pytest.raises(StateCodecError, match="runs past the blob"):
        decode_state(forged)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_blobs_decode_to_a_tree_or_a_typed_error(data: st.DataObject) -> None:
    # Prepare: a real state (DP clip with its counters) with one byte changed.
    proc = build_aggregator("cosfilter+normbound:q=0.5,init=1+fedavg").create(D)
    state = proc.next(proc.initialize(), _round(np.random.default_rng(1))).state
    blob = bytearray(encode_state(state))
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] = data.draw(st.integers(0, 255))
    # Execute + Assert: no other exception type escapes.
    try:
        decode_state(bytes(blob))
    except StateCodecError:
        pass


def test_float_bits_survive() -> None:
    tree = (math.nan, -0.0, math.inf, 5e-324, np.float32(1.5))
    assert _same(decode_state(encode_state(tree)), tree)
