"""protocol.messages at its edges (helper s61b's mutation hunt on the module): `from_json`'s
type checks on shapes no test sent (a list or object field given another kind, a body that is
no object, an `Any` value, an optional field's refusal), `check_check_in`'s "end" with an
assignment, the largest chain `pack_chain` writes, and the length caps of a model name and of
an upload's training loss, exactly at the cap and one past it.

Each refusal is a `MessageError` (what the SDK catches as a bad answer), never a TypeError or
AttributeError from walking a value of the wrong kind."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from protocol.messages import (
    MAX_MODEL_LAYOUTS,
    MAX_MODEL_NAME,
    MAX_TRAIN_LOSS,
    TRAIN_LOSS_CHARS,
    Assignment,
    CheckInResponse,
    CodecParams,
    MessageError,
    RoundStatus,
    TensorShape,
    TrainingParams,
    check_assignment,
    check_awaiting_round,
    check_check_in,
    check_model_layouts,
    check_model_names,
    check_task_id,
    check_train_loss,
    format_train_loss,
    from_json,
    pack_chain,
    unpack_chain,
)


def _round_status(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "round_id": 1, "task_id": 1, "seq": 1, "state": "open", "base_version": 0,
        "selected": 2, "target": 2, "min_reports": 1, "reports": 0,
        "opened_unix": 1.0e9, "deadline_unix": 1.0e9 + 60,
    }  # fmt: skip
    return {**body, **over}


@pytest.mark.parametrize("data", [None, [], "action retry_after_s", 3, True])
def test_a_body_that_is_no_object_is_a_message_error(data: Any) -> None:
    # A string holding the field names is the case a missing check would read by index
    with pytest.raises(MessageError, match=r"^\$: expected an object for CheckInResponse$"):
        from_json(CheckInResponse, data)


@pytest.mark.parametrize("value", [3, "ab", {"0": 3}, None, True])
def test_a_list_field_given_another_kind_is_a_message_error(value: Any) -> None:
    # "ab" is iterable, and {"0": 3} too: read as a list, "ab" would have given two entries
    with pytest.raises(MessageError, match=r"^\$\.shape: expected a list$"):
        from_json(TensorShape, {"name": "w", "shape": value})


@pytest.mark.parametrize("value", [[1, 2], [], "ab", 3, True])
def test_an_object_field_given_another_kind_is_a_message_error(value: Any) -> None:
    with pytest.raises(MessageError, match=r"^\$\.measurements: expected an object$"):
        from_json(RoundStatus, _round_status(measurements=value))


def test_an_any_value_is_taken_as_sent() -> None:
    # `measurements` is dict[str, Any]: its values, of any JSON kind, are not checked
    measurements = {"n": 1, "loss": 0.5, "tags": ["a", None], "nested": {"x": True}}
    status = from_json(RoundStatus, _round_status(measurements=measurements))
    assert status.measurements == measurements


def test_an_optional_fields_refusal_names_only_the_type_it_takes() -> None:
    # `round_outcome: str | None`: the refusal says what the field takes, not that None is a
    # type it cannot parse
    with pytest.raises(MessageError) as info:
        from_json(CheckInResponse, {"action": "wait", "retry_after_s": 1, "round_outcome": 5})
    assert str(info.value) == "$.round_outcome: expected a string"


def test_a_field_of_a_type_from_json_does_not_know_is_a_message_error() -> None:
    @dataclasses.dataclass
    class Odd:
        blob: bytes

    with pytest.raises(MessageError, match=r"^\$\.blob: unsupported type <class 'bytes'>$"):
        from_json(Odd, {"blob": "AAAA"})


def _assignment(**training: Any) -> Assignment:
    return Assignment(
        task_id=1, round_id=2, base_version=0, model_name="m", spec=[TensorShape("w", [3])],
        codec=CodecParams(), training=TrainingParams(**training), deadline_unix=1.0e9,
        model_path="/m", upload_path="/u", max_upload_bytes=1000, seed=7,
    )  # fmt: skip


def test_end_with_an_assignment_is_refused_and_train_with_one_is_taken() -> None:
    with pytest.raises(MessageError, match=r'^\$\.action is "end" but there is an assignment$'):
        check_check_in(CheckInResponse("end", 5.0, _assignment()))
    check_check_in(CheckInResponse("train", 5.0, _assignment()))
    check_check_in(CheckInResponse("end", 5.0))


def test_a_chain_holds_at_most_65535_frames() -> None:
    # Exactly at the u16 count's limit: written, and read back
    chain = pack_chain([b""] * 0xFFFF)
    assert len(unpack_chain(chain, max_frames=0xFFFF, max_frame_bytes=0)) == 0xFFFF
    # One more: a MessageError, not struct.error
    with pytest.raises(MessageError, match=r"^too many frames in one chain$"):
        pack_chain([b""] * 0x10000)


def test_a_model_name_of_the_cap_is_taken_and_one_more_is_refused() -> None:
    assert MAX_MODEL_NAME == 256
    at_cap = "n" * 256
    assert check_model_names([at_cap]) == frozenset({at_cap})
    with pytest.raises(MessageError, match=r"is not a model name \(1 to 256 characters, got 257\)"):
        check_model_names(["n" * 257])
    with pytest.raises(MessageError, match=r"is not a model name \(1 to 256 characters, got 0\)"):
        check_model_names([""])


def test_a_training_loss_of_the_cap_is_taken_and_one_more_character_is_refused() -> None:
    # 32 characters exactly (a long fraction), then 33
    assert TRAIN_LOSS_CHARS == 32
    at_cap = "0." + "1" * 30
    assert check_train_loss(at_cap) == float(at_cap)
    with pytest.raises(MessageError, match=r"is not a decimal number of at most 32 characters"):
        check_train_loss(at_cap + "1")


@pytest.mark.parametrize(
    ("training", "refusal"),
    [
        ({"local_epochs": 0}, "training.local_epochs = 0 is outside [1, 1001)"),
        ({"local_epochs": 1001}, "training.local_epochs = 1001 is outside [1, 1001)"),
        ({"batch_size": 0}, "training.batch_size = 0 is outside [1, 1000001)"),
        ({"batch_size": 1_000_001}, "training.batch_size = 1000001 is outside [1, 1000001)"),
        ({"lr": 0.0}, "training.lr = 0.0 is not a positive finite number"),
        ({"lr": -0.0}, "training.lr = -0.0 is not a positive finite number"),
    ],
)
def test_an_assignments_training_just_outside_its_range_is_refused(
    training: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(MessageError) as info:
        check_assignment(_assignment(**training))
    assert str(info.value) == f"$.assignment.{refusal}"


@pytest.mark.parametrize(
    "training",
    [
        {"local_epochs": 1, "batch_size": 1},
        {"local_epochs": 1000, "batch_size": 1_000_000},
        {"lr": 5e-324},  # the least positive float
    ],
)
def test_an_assignments_training_at_the_ends_of_its_range_is_taken(
    training: dict[str, Any],
) -> None:
    check_assignment(_assignment(**training))


@pytest.mark.parametrize("check", [check_task_id, check_awaiting_round])
def test_an_id_is_taken_up_to_2_63_minus_1(check: Any) -> None:
    assert check(1) == 1
    assert check(2**63 - 1) == 2**63 - 1
    with pytest.raises(
        MessageError, match=r"= 9223372036854775808 is outside \[1, 9223372036854775808\)$"
    ):
        check(2**63)
    with pytest.raises(MessageError, match=r"= 0 is outside \[1, 9223372036854775808\)$"):
        check(0)


@pytest.mark.parametrize(
    ("value", "kind"),
    [(True, "bool"), (False, "bool"), (1.0, "float"), ("1", "str"), (None, "NoneType")],
)
def test_an_id_that_is_no_json_integer_is_refused_by_its_type(value: Any, kind: str) -> None:
    # A bool is an int to Python, and True lies in [1, 2^63): only the type check refuses it
    with pytest.raises(MessageError) as info:
        check_task_id(value)
    assert str(info.value) == f"$.task_id: expected an integer task id, got {kind}"
    with pytest.raises(MessageError) as info:
        check_awaiting_round(value)
    assert str(info.value) == f"$.awaiting_round: expected an integer round id, got {kind}"


def test_the_largest_training_loss_is_sent_and_read_back() -> None:
    # Exactly MAX_TRAIN_LOSS (1e6): sent, and taken; the next float above it is not sent
    assert MAX_TRAIN_LOSS == 1e6
    text = format_train_loss(1e6)
    assert text == "1000000.0"
    assert check_train_loss(text) == 1e6
    assert format_train_loss(math.nextafter(1e6, math.inf)) is None
    assert format_train_loss(0.0) == "0.0" and format_train_loss(-0.0) == "0.0"


def _layouts(n: int) -> list[str]:
    return [f"{i:016x}" for i in range(n)]


def test_sixteen_layouts_or_names_are_taken_and_seventeen_refused() -> None:
    assert MAX_MODEL_LAYOUTS == 16
    assert check_model_layouts(_layouts(16)) == frozenset(_layouts(16))
    with pytest.raises(MessageError, match=r"^\$\.model_layouts: 17 layouts, more than 16$"):
        check_model_layouts(_layouts(17))
    names = [f"m{i}" for i in range(17)]
    assert check_model_names(names[:16]) == frozenset(names[:16])
    with pytest.raises(MessageError, match=r"^\$\.model_names: 17 names, more than 16$"):
        check_model_names(names)


@pytest.mark.parametrize("text", ["0" * 15, "0" * 17, "0" * 15 + "A", "0" * 15 + "g"])
def test_a_layout_is_exactly_16_lower_case_hex_digits(text: str) -> None:
    assert check_model_layouts(["0123456789abcdef"]) == frozenset({"0123456789abcdef"})
    with pytest.raises(MessageError, match=r"is not a layout fingerprint \(16 lower-case hex"):
        check_model_layouts([text])
