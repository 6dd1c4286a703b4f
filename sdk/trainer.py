"""Local training with PyTorch: plain minibatch SGD from flat params on numpy data."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from ._maxpool import fast_max_pool
from ._types import LocalTrainer, TrainResult
from .flat import get_flat_params, set_flat_params

__all__ = [
    "TorchTrainer",
    "TrainResult",
    "LocalTrainer",
    "evaluate",
    "fast_max_pool",
    "onednn_linear",
    "onednn_linear_available",
    "ONEDNN_LINEAR_MIN_WEIGHTS",
]

# Below this many weights a Linear layer stays on torch's default (BLAS) path: for small
# layers the kernel choice is lost in per-op overhead (bench/explore_cnn_speed.py, "linear").
ONEDNN_LINEAR_MIN_WEIGHTS = 1 << 16


def _mkldnn_linear_op() -> Callable[..., torch.Tensor] | None:
    """torch's oneDNN inner-product op (the one inductor uses on CPU), if this build has it."""
    if not torch.backends.mkldnn.is_available():
        return None
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        op: Callable[..., torch.Tensor] = ops._linear_pointwise  # type: ignore[union-attr]
    except (AttributeError, RuntimeError):
        return None
    return op


@functools.cache
def onednn_linear_available() -> bool:
    """True if torch's oneDNN linear op exists here and agrees with `F.linear` (forward and
    the two transposed products the backward pass uses) on a small probe."""
    op = _mkldnn_linear_op()
    if op is None:
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 40, generator=gen)
    w = torch.randn(24, 40, generator=gen)
    b = torch.randn(24, generator=gen)
    g = torch.randn(6, 24, generator=gen)
    try:
        with torch.no_grad():
            pairs = [
                (op(x, w, b, "none", [], ""), nn.functional.linear(x, w, b)),
                (op(g, w.t(), None, "none", [], ""), g @ w),
                (op(g.t(), x.t(), None, "none", [], ""), g.t() @ x),
            ]
    except RuntimeError:
        return False
    return all(
        got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-5)
        for got, want in pairs
    )


class _OneDnnLinear(torch.autograd.Function):
    """y = x W^T + b with all three matrix products (forward, dL/dx, dL/dW) run by oneDNN.

    Why: on CPUs where MKL's sgemm takes a narrow-vector path (AMD EPYC picks AVX2 though the
    core has AVX-512), oneDNN's JIT kernels are about twice as fast on the skinny products of
    small-batch training (B=10 rows against a 512x3136 weight). Same maths, float rounding aside.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        op = _mkldnn_linear_op()
        assert op is not None  # only installed after onednn_linear_available()
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape  # type: ignore[attr-defined]
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        y = op(x2, weight, bias, "none", [], "")
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        op = _mkldnn_linear_op()
        assert op is not None
        x2, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, weight.shape[0])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = op(g2, weight.t(), None, "none", [], "").reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            gw = op(g2.t(), x2.t(), None, "none", [], "")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def _fast_linear_forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() < 2:
        return nn.functional.linear(x, layer.weight, layer.bias)
    out: torch.Tensor = _OneDnnLinear.apply(x, layer.weight, layer.bias)
    return out


@contextlib.contextmanager
def onednn_linear(module: nn.Module, min_weights: int = ONEDNN_LINEAR_MIN_WEIGHTS) -> Iterator[int]:
    """Inside the block, `module`'s float32 CPU `nn.Linear` layers with at least `min_weights`
    weights run on oneDNN (see `_OneDnnLinear`); yields how many layers were switched.

    Parameters, gradients and `state_dict` are untouched: only the kernel changes. Outside
    the block (or where the op is missing or fails its probe) every layer is plain `F.linear`.
    """
    layers = [
        m
        for m in module.modules()
        if type(m) is nn.Linear
        and m.weight.dtype == torch.float32
        and m.weight.device.type == "cpu"
        and m.weight.numel() >= min_weights
    ]
    if not layers or not onednn_linear_available():
        yield 0
        return
    for layer in layers:
        # An instance attribute shadows nn.Linear.forward for this layer only.
        layer.forward = functools.partial(_fast_linear_forward, layer)  # type: ignore[method-assign]
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward


class TorchTrainer:
    """Runs E epochs of minibatch SGD (optionally with momentum) with cross-entropy loss.

    The module is reused between calls (its weights are overwritten from `params` each time),
    so one trainer serves many simulated devices without reallocating the model.

    `fast_linear` (default on) runs large `nn.Linear` layers through oneDNN while training
    (`onednn_linear`): the same SGD, about 1.1-1.2x faster per step for the MNIST CNN on an
    AMD EPYC. The result differs from the BLAS path only by float rounding.
    `fast_pool` (default on) runs `nn.MaxPool2d(2)` layers through `fast_max_pool`: bit-identical
    values and gradients, 3-5% faster for an MNIST-CNN client's local training.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        fast_linear: bool = True,
        fast_pool: bool = True,
    ) -> None:
        self.module = module
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.fast_linear = fast_linear
        self.fast_pool = fast_pool
        self.loss_fn = nn.CrossEntropyLoss()

    def train(
        self,
        params: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> TrainResult:
        if len(x) == 0:
            raise ValueError("a device needs at least one example to train")
        set_flat_params(self.module, params)
        self.module.train()
        opt = torch.optim.SGD(
            self.module.parameters(), lr=lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        xt = torch.from_numpy(np.ascontiguousarray(x))
        yt = torch.from_numpy(np.ascontiguousarray(y))
        n = len(x)
        total, count = 0.0, 0
        linear = onednn_linear(self.module) if self.fast_linear else contextlib.nullcontext(0)
        pool = fast_max_pool(self.module) if self.fast_pool else contextlib.nullcontext(0)
        with linear, pool:
            for _ in range(epochs):
                order = torch.from_numpy(rng.permutation(n))
                for start in range(0, n, batch_size):
                    idx = order[start : start + batch_size]
                    opt.zero_grad(set_to_none=True)
                    loss = self.loss_fn(self.module(xt.index_select(0, idx)), yt[idx])
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
        return TrainResult(get_flat_params(self.module), n, total / max(count, 1))


def evaluate(
    module: nn.Module,
    params: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    batch_size: int = 250,
    fast_pool: bool = True,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of `params` on a labelled set.

    `batch_size` rows per forward pass: 250 keeps the MNIST CNN's largest activation (the
    first convolution's, 32x28x28 floats per row) at about 25 MB, inside the L3 cache; 1,000
    rows spill to memory and were about 2x slower on one thread (bench/explore_cnn_speed.py).
    `fast_pool`: 2x2 max pooling through `fast_max_pool` (same values).
    """
    set_flat_params(module, params)
    module.eval()
    correct, loss_sum = 0, 0.0
    pool = fast_max_pool(module) if fast_pool else contextlib.nullcontext(0)
    with torch.inference_mode(), pool:
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            yb = torch.from_numpy(np.ascontiguousarray(y[start : start + batch_size]))
            logits = module(xb)
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return correct / len(x), loss_sum / len(x)
