"""2x2 max pooling from elementwise maxima: nn.MaxPool2d(2)'s values and gradients, faster on CPU.

torch's CPU kernel for `max_pool2d` on NCHW float tensors can be slow: on the MNIST CNN's first
activation (10x32x28x28, B=10) in a fresh process, forward and backward
take about 1.1 ms on one thread against 0.36 ms for `MaxPool2x2` (two `torch.maximum` passes and
two masks). In a real client's training the gain is smaller, 3% (1 thread) to 5% (2 threads) of
its five local epochs (bench/explore_cnn_speed.py, "maxpool"), because torch's kernel is not
always that slow there; we have not pinned down why. `fast_max_pool` swaps the kernel for the
block's duration; parameters, outputs and gradients are unchanged (see `MaxPool2x2` for ties).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["MaxPool2x2", "fast_max_pool", "max_pool_2x2"]


class MaxPool2x2(torch.autograd.Function):
    """y[n, c, i, j] = max of x[n, c, 2i:2i+2, 2j:2j+2] for contiguous x float32[N, C, H, W],
    H and W even.

    The maximum is taken within each row's pair first (left, right), then between the two rows
    (top, bottom), keeping the earlier element on ties. That is row-major first-index order, the
    rule of torch's kernel, so for finite inputs the gradient reaches the element
    `F.max_pool2d` routes it to, and values and gradients are bit-identical (a max is exact).
    With NaN or infinities the values still agree, the gradient may not.

    The choices are kept as float 0/1 masks, (b - a) > 0 computed in place: on this torch
    build, bool tensors and `torch.where` take slow paths (about 10x a float multiply), which
    would eat the gain. Memory saved for backward: x.numel() * 3/4 floats, no int64 indices.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        pairs = x.view(n, c, h, w // 2, 2)
        left, right = pairs[..., 0], pairs[..., 1]
        take_right = (right - left).gt_(0)  # 1.0 where the right element is the larger
        rows = torch.maximum(left, right).view(n, c, h // 2, 2, w // 2)
        top, bottom = rows[:, :, :, 0], rows[:, :, :, 1]
        take_bottom = (bottom - top).gt_(0)
        ctx.save_for_backward(take_right, take_bottom)
        return torch.maximum(top, bottom)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        take_right, take_bottom = ctx.saved_tensors
        n, c, h, w2 = take_right.shape
        grad = grad.contiguous()
        # Route each output's gradient to the chosen row, then to the chosen column; the other
        # slot gets grad - grad * 1 = 0 or grad - grad * 0 = grad exactly.
        rows = grad.new_empty(n, c, h // 2, 2, w2)
        torch.mul(grad, take_bottom, out=rows[:, :, :, 1])
        torch.sub(grad, rows[:, :, :, 1], out=rows[:, :, :, 0])
        per_row = rows.view(n, c, h, w2)
        out = grad.new_empty(n, c, h, w2, 2)
        torch.mul(per_row, take_right, out=out[..., 1])
        torch.sub(per_row, out[..., 1], out=out[..., 0])
        return out.view(n, c, h, 2 * w2)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """`F.max_pool2d(x, 2)` through `MaxPool2x2` where it applies (float32, 4-D, contiguous,
    even height and width), through torch's kernel elsewhere."""
    if x.dtype != torch.float32 or x.dim() != 4 or x.shape[2] % 2 or x.shape[3] % 2:
        return nn.functional.max_pool2d(x, 2)
    if not x.is_contiguous():
        return nn.functional.max_pool2d(x, 2)
    out: torch.Tensor = MaxPool2x2.apply(x)
    return out


def _pair(v: Any) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple | list) else (v, v)


def _is_plain_2x2(m: nn.MaxPool2d) -> bool:
    stride = m.stride if m.stride is not None else m.kernel_size
    return (
        _pair(m.kernel_size) == (2, 2)
        and _pair(stride) == (2, 2)
        and _pair(m.padding) == (0, 0)
        and _pair(m.dilation) == (1, 1)
        and not m.ceil_mode
        and not m.return_indices
    )


@contextlib.contextmanager
def fast_max_pool(module: nn.Module) -> Iterator[int]:
    """Inside the block, `module`'s `nn.MaxPool2d(2)` layers (kernel 2, stride 2, no padding,
    dilation or ceil mode, no indices returned) run `max_pool_2x2`; yields how many were
    switched. Other pooling layers, and inputs the fast path does not cover, are unchanged."""
    layers = [m for m in module.modules() if type(m) is nn.MaxPool2d and _is_plain_2x2(m)]
    for layer in layers:
        # An instance attribute shadows nn.MaxPool2d.forward for this layer only.
        layer.forward = max_pool_2x2  # type: ignore[method-assign,assignment]
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward
