"""docs/wire-format.md: "a dimension is an integer >= 0 (`ModelSpec` refuses others with a
`ValueError`)". `from_shapes` truncated 2.7 to 2 and read "4" and True as dimensions, so a spec
built from a bad shape hashed as another layout; `from_json`, which promises a ValueError for
anything but `to_json`'s output, raised a TypeError for a spec that is not a list."""

from __future__ import annotations

import numpy as np
import pytest

from compression import ModelSpec


@pytest.mark.parametrize("dim", [2.7, 2.0, "4", True, None, np.float32(3.0)])
def test_from_shapes_refuses_a_dimension_that_is_not_an_integer(dim: object) -> None:
    with pytest.raises(ValueError, match=r"tensor 'w': dimension .* is not an integer"):
        ModelSpec.from_shapes([("w", (3, dim))])  # type: ignore[list-item]


def test_from_shapes_takes_numpy_integers() -> None:
    spec = ModelSpec.from_shapes([("w", (np.int64(3), np.uint8(4)))])
    assert spec.entries[0].shape == (3, 4)
    assert all(type(s) is int for s in spec.entries[0].shape)
    assert spec.fingerprint == ModelSpec.from_shapes([("w", (3, 4))]).fingerprint


@pytest.mark.parametrize("data", [None, 5, {"name": "w", "shape": [3]}, "w"])
def test_from_json_refuses_a_spec_that_is_not_a_list_of_tensors(data: object) -> None:
    with pytest.raises(ValueError, match="spec"):
        ModelSpec.from_json(data)  # type: ignore[arg-type]
