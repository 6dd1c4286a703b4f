"""An encoder's weight and a config's topk are range-checked exactly (helper-329's review):
an integer weight just above 2^53 was rounded to 2^53 as a float and encoded, and an int past
a float's range (weight 2^1100, topk 2^1100) raised OverflowError, not the documented
ValueError (docs/wire-format.md, section 0)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compression import CodecConfig, ErrorFeedback, ModelSpec, UpdateCodec

SPEC = ModelSpec.from_shapes([("w", (8,))])
CODEC = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=32))
U = np.linspace(-1, 1, 8, dtype=np.float32)
TOP = 1 << 53


def _short(value: object) -> str:
    return repr(value)[:24]


def _encode(weight: object) -> float:
    frame, _ = CODEC.encode(U, np.random.default_rng(0), weight)  # type: ignore[arg-type]
    return CODEC.decode_frame(frame).weight


@pytest.mark.parametrize(
    "weight",
    [TOP + 1, np.int64(TOP + 1), np.uint64(TOP + 1), Fraction(2 * TOP + 1, 2), -1, Fraction(-1, 3)],
    ids=_short,
)
def test_a_weight_just_outside_the_range_is_refused_not_rounded_into_it(weight: object) -> None:
    with pytest.raises(ValueError, match=r"weight must be a finite number in \[0, 2\^53\]"):
        _encode(weight)


@pytest.mark.parametrize("weight", [2**1100, -(2**1100), Fraction(2**1100, 3)], ids=_short)
def test_a_weight_past_a_floats_range_is_a_value_error_on_every_encoder(weight: object) -> None:
    calls = {
        "encode": lambda: _encode(weight),
        "encode_many": lambda: CODEC.encode_many(
            U[None, :],
            [np.random.default_rng(0)],
            [weight],  # type: ignore[list-item]
        ),
        "ErrorFeedback.step": lambda: ErrorFeedback(SPEC.size).step(
            U,
            CODEC,
            np.random.default_rng(0),
            weight=weight,  # type: ignore[arg-type]
        ),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="weight must be") as info:
            call()
        assert len(str(info.value)) < 150, (name, str(info.value)[:200])  # the value is cut


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_an_integer_weight_is_accepted_exactly_when_it_is_in_range(weight: int) -> None:
    if 0 <= weight <= TOP:
        assert _encode(weight) == float(weight)  # exact: every integer up to 2^53 is a float
    else:
        with pytest.raises(ValueError, match="weight must be"):
            _encode(weight)


def test_boundaries_still_encode() -> None:
    assert _encode(TOP) == float(TOP)
    assert _encode(np.int64(TOP)) == float(TOP)
    assert _encode(Fraction(1, 3)) == 1 / 3
    assert _encode(0) == 0.0


@pytest.mark.parametrize(
    "topk", [2**1100, -(2**1100), 2, 0, float("nan"), float("inf")], ids=_short
)
def test_a_topk_out_of_range_is_a_value_error(topk: object) -> None:
    with pytest.raises(ValueError, match=r"topk must be in \(0, 1\]"):
        CodecConfig(topk=topk, bits=4)  # type: ignore[arg-type]
