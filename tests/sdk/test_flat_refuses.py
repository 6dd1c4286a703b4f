"""`set_flat_params` refuses a vector that does not fit the module before writing any
parameter: before, a short vector was copied into the leading tensors and then refused, and a
long one was copied whole and then refused, so the caller's module was left half loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sdk.flat import get_flat_params, set_flat_params


def _module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))  # 15 + 8 = 23 params


def test_a_fitting_vector_is_loaded_in_parameter_order() -> None:
    # Prepare
    module = _module()
    flat = np.arange(23, dtype=np.float32)
    # Execute
    set_flat_params(module, flat)
    # Assert
    np.testing.assert_array_equal(get_flat_params(module), flat)
    np.testing.assert_array_equal(module[0].weight.detach().numpy().ravel(), flat[:12])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(length=st.integers(0, 60).filter(lambda n: n != 23))
def test_a_vector_of_another_length_is_refused_and_the_module_is_untouched(length: int) -> None:
    # Prepare
    module = _module()
    before = get_flat_params(module)
    # Execute
    with pytest.raises(ValueError) as info:
        set_flat_params(module, np.full(length, 7.0, np.float32))
    # Assert: both counts named; not one parameter written
    assert f"shape ({length},)" in str(info.value) and "float32[23]" in str(info.value)
    np.testing.assert_array_equal(get_flat_params(module), before)


def test_a_two_dimensional_vector_of_the_right_size_is_refused() -> None:
    module = _module()
    before = get_flat_params(module)
    with pytest.raises(ValueError, match=r"shape \(23, 1\)"):
        set_flat_params(module, np.zeros((23, 1), np.float32))
    np.testing.assert_array_equal(get_flat_params(module), before)
