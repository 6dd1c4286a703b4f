"""protocol.messages.from_json refuses every malformed body with MessageError, nothing else."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages
from protocol.messages import CheckInResponse, MessageError, RoundStatus, TaskConfig, from_json


def test_an_integer_too_large_for_a_float_is_a_message_error() -> None:
    # Prepare: JSON reads 1 followed by 400 zeros as a Python int, which float() cannot hold.
    # Before, from_json raised OverflowError (not a ValueError): the SDK's _parse, which
    # catches ValueError and MessageError, let a hostile coordinator crash the client.
    body = {"action": "wait", "retry_after_s": 10**400}
    # Execute / Assert
    with pytest.raises(MessageError, match=r"\$\.retry_after_s: number out of range"):
        from_json(CheckInResponse, body)


def test_a_large_integer_that_fits_a_float_is_still_taken() -> None:
    answer = from_json(CheckInResponse, {"action": "wait", "retry_after_s": 10**300})
    assert answer.retry_after_s == 1e300


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([10**400, -(10**309), 2**63, -1, 0])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=5,
)

_CLASSES = [
    getattr(messages, name)
    for name in messages.__all__
    if dataclasses.is_dataclass(getattr(messages, name))
]


_EXTREMES = st.sampled_from([10**400, -(10**309), 2**63, -1, 0, 1e308])
_NUMBERS = st.integers(min_value=-(10**400), max_value=10**400)


def _value_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values shaped like `tp` (so that from_json reaches every field), extremes included,
    and now and then any JSON value at all."""
    return st.one_of(_typed(tp), _typed(tp), _typed(tp), _JSON) if tp is not Any else _JSON


def _typed(tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of([_value_for(a) for a in typing.get_args(tp)])
    if origin is list:
        return st.lists(_value_for(typing.get_args(tp)[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(max_size=4), _value_for(typing.get_args(tp)[1]), max_size=3)
    if dataclasses.is_dataclass(tp):
        return _body_for(tp)  # type: ignore[arg-type]
    if tp is bool:
        return st.booleans()
    if tp in (int, float):
        return st.one_of(_EXTREMES, _NUMBERS, st.floats(allow_nan=True, allow_infinity=True))
    if tp is type(None):
        return st.none()
    return st.text(max_size=8)


def _body_for(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    # Every field of cls present, each drawn for its own type (a nested message recursively).
    hints = typing.get_type_hints(cls)
    return st.fixed_dictionaries(
        {
            f.name: st.deferred(lambda tp=hints[f.name]: _value_for(tp))
            for f in dataclasses.fields(cls)
        }
    )


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(_CLASSES).flatmap(lambda c: st.tuples(st.just(c), _body_for(c))))
def test_from_json_raises_only_message_error(case: tuple[type, dict[str, Any]]) -> None:
    cls, body = case
    try:
        from_json(cls, body)
    except MessageError:
        pass


def test_nested_number_overflow_names_its_field() -> None:
    cfg = {"name": "t", "model_name": "m", "spec": [], "rounds": 1, "clients_per_round": 1}
    with pytest.raises(MessageError, match=r"\$\.training\.lr"):
        from_json(TaskConfig, {**cfg, "training": {"lr": -(10**500)}})
    with pytest.raises(MessageError, match=r"\$\.opened_unix"):
        from_json(
            RoundStatus,
            {
                **dict.fromkeys(
                    ["round_id", "task_id", "seq", "base_version", "selected", "target"], 1
                ),
                **dict.fromkeys(["min_reports", "reports"], 1),
                "state": "open",
                "opened_unix": 10**400,
                "deadline_unix": 1.0,
            },
        )
