"""The trainer's oneDNN linear path: same maths as F.linear, switched on only where it pays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from sdk.flat import get_flat_params
from sdk.trainer import TorchTrainer, onednn_linear, onednn_linear_available

needs_onednn = pytest.mark.skipif(
    not onednn_linear_available(), reason="this torch build has no usable oneDNN linear op"
)


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 300), (3, 5, 300)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_f_linear_forward_and_gradients(
    shape: tuple[int, ...], bias: bool
) -> None:
    # Prepare: a layer big enough to be switched (300 x 256 weights).
    torch.manual_seed(0)
    layer = nn.Linear(300, 256, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    g = torch.randn(*shape[:-1], 256)

    def run() -> tuple[torch.Tensor, ...]:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y = layer(x)
        y.backward(g)
        assert x.grad is not None and layer.weight.grad is not None
        grads = [x.grad.clone(), layer.weight.grad.clone()]
        if layer.bias is not None:
            assert layer.bias.grad is not None
            grads.append(layer.bias.grad.clone())
        return (y.detach(), *grads)

    # Execute
    want = run()
    with onednn_linear(layer, min_weights=1) as switched:
        got = run()

    # Assert
    assert switched == 1
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_only_large_float32_linear_layers_switch_and_the_block_restores_them() -> None:
    # Prepare: 784x200 weights pass the default threshold (65,536); 200x200 and 200x10 do not.
    model = build_model("mlp")

    # Execute
    with onednn_linear(model) as switched:
        inside = [("forward" in vars(m)) for m in model.modules() if isinstance(m, nn.Linear)]

    # Assert
    expected = 1 if onednn_linear_available() else 0
    assert switched == expected
    assert inside == [bool(expected), False, False]
    assert not any("forward" in vars(m) for m in model.modules())


@needs_onednn
def test_trainer_results_agree_with_and_without_onednn_within_float_tolerance() -> None:
    # Prepare: the MLP (its 784x200 layer switches), 3 epochs of B=10 on 200 digits-like rows.
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 784)).astype(np.float32)
    y = rng.integers(0, 10, 200).astype(np.int64)
    p0 = get_flat_params(build_model("mlp"))

    # Execute
    plain, fast, again = (
        TorchTrainer(build_model("mlp"), fast_linear=f, fused=False).train(
            p0, x, y, epochs=3, batch_size=10, lr=0.05, rng=np.random.default_rng(1)
        )
        for f in (False, True, True)
    )

    # Assert
    np.testing.assert_allclose(fast.params - p0, plain.params - p0, atol=1e-5, rtol=1e-4)
    assert fast.loss == pytest.approx(plain.loss, rel=1e-5)
    np.testing.assert_array_equal(fast.params, again.params)  # deterministic


def test_fast_linear_is_a_no_op_for_small_models() -> None:
    # Prepare: digits_mlp's layers (64x32, 32x10) are below the threshold.
    d = load_digits_data()
    p0 = get_flat_params(build_model("digits_mlp"))

    # Execute
    a, b = (
        TorchTrainer(build_model("digits_mlp"), fast_linear=f).train(
            p0,
            d.x_train[:50],
            d.y_train[:50],
            epochs=1,
            batch_size=10,
            lr=0.1,
            rng=np.random.default_rng(0),
        )
        for f in (False, True)
    )

    # Assert
    np.testing.assert_array_equal(a.params, b.params)
