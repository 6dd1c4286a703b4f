"""The weight gradient of a one-input-channel `nn.Conv2d` as unfold (im2col) and one batched
matmul, on CPUs where that beats oneDNN's kernel.

On an AMD EPYC whose torch kernels dispatch to AVX2 (no AVX-512), oneDNN's
`convolution_backward` takes 1.38 ms for the MNIST CNN's first layer's weight gradient (one
channel in, 32 filters 5x5, B=10 real images: 9 GFLOP/s, a tenth of what the same library
reaches on the next layer), against 0.63 ms for `unfold` and one `bmm`; the latter is also
closer to the float64 result (2.8e-7 against 2.7e-6 of the largest entry). That is 5-6% of an
MNIST-CNN training step there (`python bench/explore_cnn_speed.py --only conv1 ops`,
bench/results/cnn_speed_ops_amd_avx2.json). On the AVX-512 machines measured, oneDNN did the
first layer's forward and backward together in 0.27 ms (bench/results/cnn_speed_ops.json), so
`unfold_conv_preferred` keeps oneDNN there.

Only the weight and bias gradients change kernel: the forward pass and the input gradient (a
first layer has none to compute) are oneDNN's as before. `TorchTrainer` uses this on both of
its paths (`unfold_conv` here on the autograd path, the fused step's own call on the other), so
the two stay bit-identical to each other; against torch's own kernel the trained parameters
differ by float rounding only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = [
    "conv_param_grads",
    "unfold_conv",
    "unfold_conv_backward",
    "unfold_conv_preferred",
    "unfold_grad_conv",
]

_aten = torch.ops.aten

# The CPU capabilities (`torch.backends.cpu.get_cpu_capability()`) on which the unfold path
# was measured faster than oneDNN's kernel.
FASTER_ON = frozenset({"AVX2"})


@functools.cache
def unfold_conv_preferred() -> bool:
    """True where torch's CPU kernels dispatch to a capability the unfold path was measured
    faster on (`FASTER_ON`)."""
    try:
        return torch.backends.cpu.get_cpu_capability() in FASTER_ON
    except (AttributeError, RuntimeError):
        return False


def unfold_grad_conv(conv: nn.Module) -> bool:
    """True if `conv` is a layer the unfold weight gradient covers: an exact `nn.Conv2d` with
    one input channel (so one group), zero padding given in numbers, float32 on the CPU."""
    if type(conv) is not nn.Conv2d or "forward" in conv.__dict__:
        return False
    pads = conv.padding
    return (
        conv.in_channels == 1
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not conv.transposed
        and not isinstance(pads, str)
        and all(isinstance(v, int) for v in (*pads, *conv.stride, *conv.dilation))
        and conv.weight.dtype == torch.float32
        and conv.weight.device.type == "cpu"
    )


def conv_param_grads(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight_shape: torch.Size,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    bias: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dL/dW, dL/db or None) of a one-input-channel 2-D convolution, from the gradient of its
    output `grad` [N, C_out, H_out, W_out] and its input `x` [N, 1, H, W]: each image's patches
    (unfold, [N, kh*kw, H_out*W_out]) times its output gradient, summed over the batch."""
    n, c_out = grad.shape[0], grad.shape[1]
    cols = nn.functional.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    g = grad.reshape(n, c_out, cols.shape[2])
    gw = torch.bmm(g, cols.transpose(1, 2)).sum(0).view(weight_shape)
    gb = grad.sum((0, 2, 3)) if bias else None
    return gw, gb


def unfold_conv_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    conv: nn.Conv2d,
    need_input: bool,
    need_bias: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(dL/dx or None, dL/dW, dL/db or None) of `conv` (a layer `unfold_grad_conv` covers, with
    weights `weight`) at input `x`: the input gradient by oneDNN's `convolution_backward` when
    `need_input`, the parameter gradients by `conv_param_grads`. The one backward both of
    `TorchTrainer`'s paths run."""
    gx = None
    if need_input:
        gx = _aten.convolution_backward(
            grad, x, weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], 1,
            [True, False, False],
        )[0]  # fmt: skip
    gw, gb = conv_param_grads(
        grad, x, weight.shape, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
        conv.dilation, need_bias,  # type: ignore[arg-type]
    )  # fmt: skip
    return gx, gw, gb


class _UnfoldGradConv(torch.autograd.Function):
    """`conv`'s forward on oneDNN as `F.conv2d` runs it; its backward: the input gradient by
    `convolution_backward`, the weight and bias gradients by `conv_param_grads`."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        conv: nn.Conv2d,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = conv  # type: ignore[attr-defined]
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        out: torch.Tensor = _aten.convolution(
            x, weight, bias, conv.stride, conv.padding, conv.dilation, False, [0, 0], 1
        )
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, gw, gb = unfold_conv_backward(
            grad, x, weight, ctx.conv, need[0], ctx.has_bias and need[2]
        )
        return gx, gw if need[1] else None, gb, None


def _unfold_conv_forward(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
        return nn.Conv2d.forward(layer, x)
    out: torch.Tensor = _UnfoldGradConv.apply(x, layer.weight, layer.bias, layer)
    return out


@contextlib.contextmanager
def unfold_conv(module: nn.Module) -> Iterator[int]:
    """Inside the block, `module`'s one-input-channel `nn.Conv2d` layers (`unfold_grad_conv`)
    take their weight and bias gradients from `conv_param_grads`; yields how many layers were
    switched. Outputs, input gradients and parameters are untouched: only the kernel of the
    two parameter gradients changes."""
    layers = [m for m in module.modules() if unfold_grad_conv(m)]
    for layer in layers:
        # An instance attribute shadows nn.Conv2d.forward for this layer only.
        layer.forward = functools.partial(_unfold_conv_forward, layer)  # type: ignore[method-assign,arg-type]
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward
