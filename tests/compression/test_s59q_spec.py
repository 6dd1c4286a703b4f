"""s59q mutation hunt: `compression.ModelSpec`'s bounds and derived sizes, at their edges."""

from __future__ import annotations

import pytest

from compression import ModelSpec
from compression._spec import MAX_MODEL_SIZE, TensorEntry


def test_the_largest_model_is_2_to_the_31_scalars() -> None:
    assert MAX_MODEL_SIZE == 2**31
    spec = ModelSpec.from_shapes([("w", (2**31,))])
    assert spec.size == 2**31
    assert ModelSpec.from_shapes([("w", (2**30,)), ("b", (2**30,))]).size == 2**31
    with pytest.raises(ValueError, match=r"^model size 2147483649 outside 1\.\.2147483648$"):
        ModelSpec.from_shapes([("w", (2**31,)), ("b", (1,))])
    with pytest.raises(ValueError, match=r"^tensor 'w': a dimension is above 2147483648"):
        ModelSpec.from_shapes([("w", (2**31 + 1,))])


def test_a_model_of_one_scalar_is_the_smallest() -> None:
    assert ModelSpec.from_shapes([("w", (1,))]).size == 1
    assert ModelSpec.from_shapes([("w", ())]).size == 1  # a scalar tensor
    with pytest.raises(ValueError, match=r"^model size 0 outside 1\.\.2147483648$"):
        ModelSpec.from_shapes([("w", (0,))])
    with pytest.raises(ValueError, match=r"^model size 0 outside"):
        ModelSpec(())


def test_a_zero_dimension_up_to_2_to_the_31_is_accepted() -> None:
    # A dimension exactly at the bound is legal (only a zero dimension lets it exist).
    spec = ModelSpec.from_shapes([("e", (0, 2**31)), ("w", (3,))])
    assert spec.size == 3
    assert spec.entries[0].size == 0
    assert spec.boundaries() == [(0, 0), (0, 3)]
    with pytest.raises(ValueError, match=r"^tensor 'e': a dimension is above 2147483648"):
        ModelSpec.from_shapes([("e", (0, 2**31 + 1)), ("w", (3,))])


def test_an_entry_with_a_zero_dimension_is_accepted_directly() -> None:
    spec = ModelSpec((TensorEntry("e", (0,), 0, 0), TensorEntry("w", (2,), 0, 2)))
    assert spec.size == 2
    with pytest.raises(ValueError, match=r"shape must be a tuple of integers >= 0"):
        ModelSpec((TensorEntry("e", (-1,), 0, 0), TensorEntry("w", (2,), 0, 2)))


def test_dense_bytes_is_four_bytes_a_scalar() -> None:
    spec = ModelSpec.from_shapes([("w", (7, 9)), ("b", (3,))])
    assert spec.size == 66
    assert spec.dense_bytes == 264


def test_a_layout_must_be_contiguous() -> None:
    with pytest.raises(ValueError, match=r"^inconsistent layout at tensor 'b'$"):
        ModelSpec((TensorEntry("w", (2,), 0, 2), TensorEntry("b", (2,), 3, 2)))
    with pytest.raises(ValueError, match=r"^inconsistent layout at tensor 'w'$"):
        ModelSpec((TensorEntry("w", (2,), 0, 3),))


def test_a_duplicate_tensor_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^duplicate tensor name 'w'$"):
        ModelSpec.from_shapes([("w", (2,)), ("w", (3,))])


def test_from_shapes_names_a_negative_dimension() -> None:
    with pytest.raises(ValueError, match=r"^negative dimension in 'w': \(2, -1\)$"):
        ModelSpec.from_shapes([("w", (2, -1)), ("b", (3,))])


def test_a_name_that_is_not_unicode_text_is_refused() -> None:
    with pytest.raises(ValueError, match=r"is not Unicode text \(an unpaired surrogate\)$"):
        ModelSpec.from_shapes([("w\ud800", (2,))])
    with pytest.raises(ValueError, match=r"must be text with no NUL character$"):
        ModelSpec.from_shapes([("w\0", (2,))])


@pytest.mark.parametrize(
    "data",
    [
        [{"name": 3, "shape": [2]}],
        [{"name": "w", "shape": (2,)}],
        [{"name": "w", "shape": "2"}],
    ],
)
def test_from_json_wants_a_string_name_and_a_list_shape(data: list[dict[str, object]]) -> None:
    with pytest.raises(ValueError, match=r"^spec entries need a string name and a list shape$"):
        ModelSpec.from_json(data)


def test_from_json_round_trips() -> None:
    spec = ModelSpec.from_shapes([("w", (7, 9)), ("e", (0,)), ("b", (3,))])
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_json(spec.to_json()).fingerprint == spec.fingerprint
