"""sdk._conv: one-input-channel convolutions' weight and bias gradients as unfold + one batched
matmul (`TorchTrainer(unfold_conv=...)`), on the autograd path and in the fused step alike."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sdk._conv as conv_mod
from mobile_sim.models import build_model
from sdk._conv import conv_param_grads, unfold_conv, unfold_conv_preferred, unfold_grad_conv
from sdk.flat import get_flat_params
from sdk.trainer import TorchTrainer


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 4),
    filters=st.integers(1, 6),
    height=st.integers(3, 9),
    width=st.integers(3, 9),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    bias=st.booleans(),
)
def test_param_grads_are_the_convolution_s_gradients(
    seed: int,
    n: int,
    filters: int,
    height: int,
    width: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    bias: bool,
) -> None:
    # Prepare: a one-channel convolution of any geometry that has an output, in float64 (the
    # reference) and float32.
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True)]
    if height + 2 * padding[0] < span[0] or width + 2 * padding[1] < span[1]:
        return
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, height, width, generator=gen, dtype=torch.float64)
    w = torch.randn(filters, 1, *kernel, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(filters, generator=gen, dtype=torch.float64, requires_grad=True)
    out = nn.functional.conv2d(x, w, b if bias else None, stride, padding, dilation)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(g)

    # Act
    gw, gb = conv_param_grads(
        g.float(), x.float(), w.shape, kernel, stride, padding, dilation, bias
    )

    # Assert: float rounding only, and no bias gradient without a bias
    assert gw.dtype == torch.float32 and gw.shape == w.shape
    scale = float(w.grad.abs().max()) + 1.0
    assert float((gw.double() - w.grad).abs().max()) <= 1e-5 * scale
    if bias:
        assert gb is not None
        assert float((gb.double() - b.grad).abs().max()) <= 1e-5 * (float(b.grad.abs().max()) + 1)
    else:
        assert gb is None


def _two_one_channel_convs() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(1, 4, 3, stride=2, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def test_inside_the_block_gradients_are_torch_s_and_forward_is_put_back() -> None:
    # Prepare: two one-channel convolutions (the second needs its input gradient), the input
    # itself requiring a gradient too
    module = _two_one_channel_convs()
    x = torch.randn(5, 1, 10, 10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    nn.functional.cross_entropy(module(x), torch.tensor([0, 1, 2, 0, 1])).backward()
    want = [p.grad.clone() for p in module.parameters()]
    want_x = x.grad.clone()
    module.zero_grad(set_to_none=True)
    x.grad = None

    # Act
    with unfold_conv(module) as switched:
        out = module(x)
        nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0, 1])).backward()

    # Assert: both layers switched, every gradient (the input's too) torch's to float
    # rounding, and no layer keeps an instance forward
    assert switched == 2
    for got, ref in zip([p.grad for p in module.parameters()], want, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad, want_x, atol=1e-6, rtol=1e-5)
    assert all("forward" not in m.__dict__ for m in module.modules())


class _MyConv(nn.Conv2d):
    pass


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(2, 4, 3),  # two input channels
        _MyConv(1, 4, 3),  # a subclass
        nn.Conv2d(1, 4, 3, padding="same"),  # padding given as a string
        nn.Conv2d(1, 4, 3, padding_mode="reflect"),
        nn.Conv2d(1, 4, 3).double(),
    ],
    ids=["two-channels", "subclass", "padding-same", "reflect", "float64"],
)
def test_other_convolutions_keep_torch_s_kernel(layer: nn.Module) -> None:
    # Act / Assert: not covered, so not switched
    assert not unfold_grad_conv(layer)
    with unfold_conv(nn.Sequential(layer)) as switched:
        assert switched == 0
        assert "forward" not in layer.__dict__


def _count_param_grads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = conv_mod.conv_param_grads

    def spy(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(conv_mod, "conv_param_grads", spy)  # both paths call it there
    return calls


def _train(fused: bool, unfold: bool | None, steps_data: tuple[Any, Any]) -> np.ndarray:
    x, y = steps_data
    trainer = TorchTrainer(build_model("mnist_cnn", seed=0), fused=fused, unfold_conv=unfold)
    params = get_flat_params(build_model("mnist_cnn", seed=0))
    res = trainer.train(
        params, x, y, epochs=1, batch_size=10, lr=0.05, rng=np.random.default_rng(1)
    )
    return res.params


@pytest.fixture(scope="module")
def batches() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((23, 1, 28, 28)).astype(np.float32)
    return x, rng.integers(0, 10, 23)


def test_the_fused_step_and_autograd_agree_bit_for_bit_on_the_unfold_path(
    batches: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    calls = _count_param_grads(monkeypatch)

    # Act: the MNIST CNN (its first layer has one input channel), three steps each way
    fused = _train(True, True, batches)
    fused_calls = calls[0]
    autograd = _train(False, True, batches)

    # Assert: each path took the unfold gradient once a step, and the two paths' arithmetic
    # is the same; torch's own kernel is float rounding away
    assert fused_calls == 3 and calls[0] == 6
    assert np.array_equal(fused, autograd)
    onednn = _train(True, False, batches)
    assert calls[0] == 6
    np.testing.assert_allclose(fused, onednn, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("preferred", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_by_default_the_trainer_follows_the_measured_preference(
    batches: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    preferred: bool,
    fused: bool,
) -> None:
    # Prepare
    calls = _count_param_grads(monkeypatch)
    monkeypatch.setattr("sdk.trainer.unfold_conv_preferred", lambda: preferred)

    # Act
    _train(fused, None, batches)

    # Assert
    assert calls[0] == (3 if preferred else 0)


@pytest.mark.parametrize(
    ("capability", "want"),
    [("AVX2", True), ("AVX512", False), ("DEFAULT", False), (RuntimeError("no"), False)],
)
def test_the_preference_is_the_capabilities_it_was_measured_faster_on(
    monkeypatch: pytest.MonkeyPatch, capability: Any, want: bool
) -> None:
    # Prepare: torch's answer replaced, the cached preference forgotten before and after
    def capability_fn() -> str:
        if isinstance(capability, Exception):
            raise capability
        return str(capability)

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", capability_fn)
    unfold_conv_preferred.cache_clear()
    try:
        # Act / Assert
        assert unfold_conv_preferred() is want
    finally:
        monkeypatch.undo()
        unfold_conv_preferred.cache_clear()
