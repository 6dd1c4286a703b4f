"""The trainer's 2x2 max pool: torch's values and gradients bit for bit, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mobile_sim.models import build_model
from sdk._maxpool import MaxPool2x2, fast_max_pool, max_pool_2x2
from sdk.flat import get_flat_params
from sdk.trainer import TorchTrainer, evaluate


def _pool_and_grad(
    fn: object, x: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    y = fn(leaf)  # type: ignore[operator]
    y.backward(g)
    assert leaf.grad is not None
    return y.detach(), leaf.grad


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    levels=st.sampled_from([2, 3, 1000]),
    seed=st.integers(0, 2**32 - 1),
)
def test_values_and_gradients_are_bit_identical_to_torch(
    n: int, c: int, h: int, w: int, levels: int, seed: int
) -> None:
    # Prepare: few distinct levels force ties inside windows (the tie rule decides where the
    # gradient goes); signed zeros and negative values included.
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(-(levels // 2), levels - levels // 2, (n, c, 2 * h, 2 * w)))
    x = x.float() * (0.5 if levels > 3 else 1.0)
    g = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32))

    # Execute
    want_y, want_g = _pool_and_grad(lambda t: nn.functional.max_pool2d(t, 2), x, g)
    got_y, got_g = _pool_and_grad(MaxPool2x2.apply, x, g)

    # Assert: equal values; equal gradients up to the sign of zero.
    assert torch.equal(got_y, want_y)
    assert torch.equal(got_g, want_g)


def test_ties_send_the_gradient_to_the_first_element_in_row_major_order() -> None:
    # Prepare: one window [[1, 5], [5, 0]]: torch picks (0, 1), the first 5 in row-major order.
    x = torch.tensor([[[[1.0, 5.0], [5.0, 0.0]]]])
    g = torch.ones(1, 1, 1, 1)

    # Execute
    _, grad = _pool_and_grad(MaxPool2x2.apply, x, g)

    # Assert
    assert grad.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "x",
    [
        torch.randn(2, 3, 5, 4),  # odd height
        torch.randn(2, 3, 4, 6).transpose(2, 3),  # not contiguous
        torch.randn(2, 3, 4, 4, dtype=torch.float64),  # not float32
        torch.randn(3, 4, 4),  # 3-D (unbatched)
    ],
    ids=["odd", "strided", "float64", "unbatched"],
)
def test_inputs_outside_the_fast_path_fall_back_to_torch(x: torch.Tensor) -> None:
    # Execute
    got = max_pool_2x2(x)

    # Assert
    assert torch.equal(got, nn.functional.max_pool2d(x, 2))


def test_only_plain_2x2_max_pools_switch_and_the_block_restores_them() -> None:
    # Prepare: the CNN's pool, plus three pools the fast path does not cover.
    model = nn.Sequential(
        build_model("mnist_cnn"),
        nn.MaxPool2d(3),
        nn.MaxPool2d(2, padding=1),
        nn.MaxPool2d(2, ceil_mode=True),
    )

    # Execute
    with fast_max_pool(model) as switched:
        inside = [("forward" in vars(m)) for m in model.modules() if isinstance(m, nn.MaxPool2d)]

    # Assert
    assert switched == 1
    assert inside == [True, False, False, False]
    assert not any("forward" in vars(m) for m in model.modules())


def test_trainer_and_evaluate_give_identical_results_with_and_without_the_fast_pool() -> None:
    # Prepare: the MNIST CNN, 2 epochs of B=10 over 40 random images.
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 40).astype(np.int64)
    p0 = get_flat_params(build_model("mnist_cnn", seed=0))

    # Execute
    results = [
        TorchTrainer(build_model("mnist_cnn"), fast_pool=fast, fused=False).train(
            p0, x, y, epochs=2, batch_size=10, lr=0.05, rng=np.random.default_rng(1)
        )
        for fast in (False, True)
    ]
    evals = [
        evaluate(build_model("mnist_cnn"), results[0].params, x, y, fast_pool=fast)
        for fast in (False, True)
    ]

    # Assert
    assert np.array_equal(results[0].params, results[1].params)
    assert results[0].loss == results[1].loss
    assert evals[0] == evals[1]
