"""Export a torch model as ONNX training artifacts that plain onnxruntime runs (no torch)."""

# Two graphs are written, both taking the parameters as inputs so a device swaps in a new global
# model without rewriting a file: infer.onnx `(p0, ..., x) -> logits` and train_step.onnx
# `(p0, ..., [m0, ...], x, y, lr) -> (loss, new_p0, ..., [new_m0, ...])`, plus manifest.json
# (read by `sdk.ort.load_manifest`) with the flat layout in `compression.ModelSpec` order.
#
# Route: the joint forward-backward step is traced to ATen with `make_fx` (the tracer under
# `torch._functorch.aot_autograd`), backward ops that torch can decompose are decomposed while
# tracing, and `torch.onnx.export(dynamo=True)` exports the trace. Convolution and pooling
# backward have no ONNX translation in torchlib; onnxscript translations are registered below.
# Decomposing `nll_loss_backward` at trace time also avoids the exporter's own handling of it,
# whose gradient came out batch-size times too large with torch 2.13 (`total_weight` ignored).
# The batch dimension is symbolic, so a last partial batch is one smaller step, as in torch with
# `drop_last=False`. docs/devices.md has the full story; tests/sdk/test_onnx_parity.py the proof.
#
# Errors: ExportError
#           +-- UnsupportedLayerError  a layer or layer option the graph cannot train
#           +-- ExampleInputError      example_x / example_y does not fit the model (`.reason`)
#           +-- OutputError            the files could not be written (nothing is left behind)

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import re
import secrets
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import torch
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnxscript import opset18 as op
from torch import nn
from torch._decomp import decomposition_table
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode

from compression import ModelSpec

from .ort import session_options
from .trainer import (
    IGNORE_INDEX,
    MAX_FLOAT_VOCAB,
    cast_readers,
    float_id_reader,
    input_vocabulary,
    restored_slots,
)

__all__ = [
    "ExampleInputError",
    "ExportError",
    "ExportResult",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "OPSET",
    "OutputError",
    "SUPPORTED_LAYERS",
    "SUPPORTED_LOSSES",
    "SUPPORTED_OPTIMIZERS",
    "UnsupportedLayerError",
    "check_supported",
    "check_training_mode",
    "export_training_artifacts",
]

MANIFEST_FORMAT = "plume-onnx-train"
MANIFEST_VERSION = 1
OPSET = 18
SUPPORTED_LOSSES = ("ce", "mse")
SUPPORTED_OPTIMIZERS = ("sgd", "momentum")

# Leaf layers the training graph supports; containers (Sequential, ModuleList, custom modules
# that own no parameters themselves) are walked through.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Embedding,
    nn.LayerNorm,
    nn.Identity,
)
_CONTAINERS: tuple[type[nn.Module], ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

_A = torch.ops.aten
# Backward (and loss) ops decomposed while tracing: torch's decompositions are exact and land on
# ops the ONNX exporter translates. Convolution and pooling backward are translated below instead.
_TRACE_DECOMPOSITIONS = {
    op_: decomposition_table[op_]
    for op_ in (
        _A.nll_loss_forward.default,
        _A.nll_loss_backward.default,
        _A._log_softmax_backward_data.default,
        _A._softmax_backward_data.default,
        _A.threshold_backward.default,
        _A.gelu_backward.default,
        _A.tanh_backward.default,
        _A.sigmoid_backward.default,
        _A.embedding_dense_backward.default,
        _A.native_layer_norm_backward.default,
        _A.mse_loss.default,
        _A.mse_loss_backward.default,
    )
}


class ExportError(Exception):
    """The model could not be exported for on-device training."""


class UnsupportedLayerError(ExportError):
    """A layer (or a layer option) that the on-device training graph does not support."""


class ExampleInputError(ExportError):
    """`example_x` (or `example_y`) does not fit the model: its forward pass or loss refuses it.

    `reason` is the short why (the first line of torch's error, or the shapes that disagree),
    for callers that phrase the rest themselves, as `plume export` does with its flags.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class OutputError(ExportError):
    """The artifacts could not be written to the output folder (the OS refused it)."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Where the artifacts went and what they hold."""

    out_dir: Path
    manifest: dict[str, Any]
    spec: ModelSpec


def _supported_names() -> str:
    return ", ".join(cls.__name__ for cls in SUPPORTED_LAYERS)


def _refuse(module: nn.Module, path: str, why: str = "") -> UnsupportedLayerError:
    where = path or "<root>"
    detail = f" ({why})" if why else ""
    return UnsupportedLayerError(
        f"{type(module).__name__} at {where!r} is not supported for on-device training{detail}; "
        f"supported: {_supported_names()}"
    )


def _check_options(module: nn.Module, path: str) -> None:
    """Refuse options of supported layers that the exported graph does not reproduce."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise _refuse(module, path, f"groups={module.groups}; only groups=1")
        if module.padding_mode != "zeros":
            raise _refuse(module, path, f"padding_mode={module.padding_mode!r}")
        if isinstance(module.padding, str) and module.padding != "valid":
            raise _refuse(module, path, f"padding={module.padding!r}; give integer padding")
    elif isinstance(module, nn.MaxPool2d):
        if module.ceil_mode or module.return_indices:
            raise _refuse(module, path, "ceil_mode and return_indices must be False")
    elif isinstance(module, nn.AvgPool2d):
        if module.ceil_mode or module.divisor_override is not None:
            raise _refuse(module, path, "ceil_mode must be False, divisor_override None")
    elif isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.sparse or module.scale_grad_by_freq:
            raise _refuse(module, path, "max_norm, sparse and scale_grad_by_freq are unsupported")


def check_supported(model: nn.Module) -> None:
    """Raise `UnsupportedLayerError` naming the first layer the training graph cannot handle.

    Every leaf module must be one of `SUPPORTED_LAYERS` with supported options; a non-leaf module
    may be any container as long as it owns no parameters or buffers of its own (its forward is
    traced, but a parameter outside a supported layer would train with unchecked ops).
    """
    for path, module in model.named_modules():
        if any(
            nn.parameter.is_lazy(t) for t in (*module.parameters(False), *module.buffers(False))
        ):
            # A lazy layer (LazyLinear subclasses Linear) would draw its weights in the forward
            # check below, which then blamed its container for random numbers, and changed the
            # caller's model; its shapes are unknown until then anyway.
            raise _refuse(module, path, "its parameters are uninitialized; run one forward pass")
        children = list(module.children())
        if not children:
            if not isinstance(module, SUPPORTED_LAYERS):
                raise _refuse(module, path)
            _check_options(module, path)
            if any(True for _ in module.buffers(recurse=False)):
                raise _refuse(module, path, "layers with buffers are not federated")
            continue
        if isinstance(module, SUPPORTED_LAYERS) and not isinstance(module, _CONTAINERS):
            _check_options(module, path)
            continue
        own_params = [n for n, _ in module.named_parameters(recurse=False)]
        own_buffers = [n for n, _ in module.named_buffers(recurse=False)]
        if own_params or own_buffers:
            raise _refuse(
                module, path, f"it owns tensors {own_params + own_buffers} outside a layer"
            )
    if not any(p.requires_grad for p in model.parameters()):
        raise ExportError("the model has no trainable parameters")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise ExportError(f"frozen parameters are not supported: {frozen}")


class _RandomOpWatch(TorchDispatchMode):
    """Records the first ATen op that draws random numbers, with the module running it."""

    def __init__(self, running: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.running = running
        self.first: tuple[str, nn.Module, str] | None = None

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if self.first is None and torch.Tag.nondeterministic_seeded in func.tags:
            path, module = self.running[-1]
            self.first = (path, module, str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


# What a forward pass raises when the input does not fit (wrong shape, dtype or token id).
_MISFIT_ERRORS = (RuntimeError, TypeError, ValueError, IndexError)


def check_training_mode(model: nn.Module, example_x: torch.Tensor) -> None:
    """Refuse a model whose forward pass draws random numbers, or changes with training mode.

    `check_supported` sees modules only; functional code in a container's (or a supported
    layer subclass's) `forward`, such as ``F.dropout(x, p, self.training)`` or added noise,
    would otherwise be traced away in eval mode or baked in as one fixed draw: either way the
    device would train a different model than torch does. One forward pass on `example_x` in
    training mode finds the first random op (`UnsupportedLayerError` naming the module that
    ran it); a second in eval mode must then give the same output. An `example_x` the forward
    pass refuses (wrong shape or dtype) raises `ExampleInputError` instead of torch's error.
    Torch's random state and the model's mode are left as they were.
    """
    _checked_forward(model, example_x)


def _float_id_vocabulary(model: nn.Module, example_x: torch.Tensor) -> int | None:
    """For float `example_x`: the rows of the `nn.Embedding` that reads it as token ids, to be
    recorded in the manifest, or None.

    An embedding reads token ids when it reads the input's cast (``x.long()``) on two probe
    inputs (`sdk.trainer.float_id_reader`: zeros and negative whole numbers, so a flag such as
    ``(x > 0.5).long()`` is not taken for ids); and `example_x` says whether its values are
    ids: whole numbers only. An example holding a fraction records nothing (a model bucketing
    features with ``x.long()`` reads the same way), and the device then checks no ids.
    If the model's forward pass refuses the probes (`float_id_reader` finds nothing), a whole
    example decides alone (`_example_id_reader`). mobile_sim's text datasets hold ids as
    float32; with the vocabulary recorded, `sdk.ort`
    checks them before training (onnxruntime's Gather reads id -1 as the last row, where torch
    raises). Raises `ExampleInputError` if such an embedding cannot take `example_x` at all
    (a value that is not finite, or truncates outside its rows: torch only said "index out of
    range in self"), `ExportError` if a vocabulary to record is past what float32 holds
    exactly.
    """
    if not example_x.dtype.is_floating_point:
        return None
    found = float_id_reader(model, tuple(example_x.shape[1:]), example_x.dtype)
    if found is None:
        found = _example_id_reader(model, example_x)
    if found is None:
        return None
    n, path = found
    x = example_x.detach()
    bad = ~torch.isfinite(x) | (x.trunc() < 0) | (x.trunc() >= n)
    if bool(bad.any()):
        reason = (
            f"the embedding at {path!r} reads x as token ids and x holds "
            f"{float(x[bad][0]):g}: token ids must be whole numbers in [0, {n})"
        )
        raise ExampleInputError(
            f"example_x of shape {list(x.shape)} "
            f"({str(x.dtype).removeprefix('torch.')}) does not fit the model: {reason}",
            reason,
        )
    if bool((x != x.floor()).any()):
        return None  # features, truncated by the model: no ids to check
    if n > MAX_FLOAT_VOCAB:
        raise ExportError(
            f"the embedding at {path!r} reads float token ids but has {n} rows: "
            f"float32 holds whole numbers exactly only up to 2^24; pass int64 ids"
        )
    return n


def _example_id_reader(model: nn.Module, example_x: torch.Tensor) -> tuple[int, str] | None:
    """(rows, path) of the `nn.Embedding` whose read is ``example_x.long()`` on `example_x`
    itself (the fewest rows if several), for a model whose forward pass refuses
    `float_id_reader`'s probes; None if none is, or if `example_x` is not whole numbers with
    one past 1 (a flag ``(x > 0.5).long()`` equals the cast on 0/1 values, a clamp on values
    below its bound). One forward pass (eval mode, no grad, the RNG state and mode restored;
    each embedding reads its input clamped to its rows, so an id past them is left to the
    caller's check); None if it raises."""
    x = example_x.detach()
    if not bool(torch.isfinite(x).all()) or bool((x != x.floor()).any()) or x.numel() == 0:
        return None
    if float(x.max()) <= 1:
        return None
    runs = cast_readers(model, [x], want=1)  # [] if the forward pass raises:
    found = runs[0] if runs else {}  # `_checked_forward` reports it
    if not found:
        return None
    path = min(found, key=lambda k: found[k])
    return found[path], path


def _checked_forward(model: nn.Module, example_x: torch.Tensor) -> torch.Tensor:
    """`check_training_mode`, returning the eval-mode output on `example_x` (no grad).

    The export needs that output's shape for the targets; returning it saves a third pass.
    """
    running: list[tuple[str, nn.Module]] = [("", model)]

    def enter(path: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, _args: Any) -> None:
            running.append((path, module))

        return hook

    def leave(_module: nn.Module, _args: Any, _out: Any) -> None:
        running.pop()  # a hook that returned something would replace the module's output

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(path)))
        handles.append(module.register_forward_hook(leave))
    was_training = model.training
    watch = _RandomOpWatch(running)
    try:
        with torch.random.fork_rng(), torch.no_grad():
            model.train()
            try:
                with watch:
                    trained = model(example_x)
            except _MISFIT_ERRORS as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ExampleInputError(
                    f"example_x of shape {list(example_x.shape)} "
                    f"({str(example_x.dtype).removeprefix('torch.')}) does not fit the model: "
                    f"{reason}",
                    reason,
                ) from exc
            if watch.first is None:
                model.eval()
                evaluated = model(example_x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if watch.first is not None:
        path, module, name = watch.first
        raise _refuse(module, path, f"its forward draws random numbers in training mode: {name}")
    if not isinstance(trained, torch.Tensor) or not isinstance(evaluated, torch.Tensor):
        raise ExportError(f"the model's forward must return one tensor, not {type(trained)}")
    if trained.shape != evaluated.shape or not torch.allclose(
        trained, evaluated, rtol=1e-5, atol=1e-6
    ):
        raise ExportError(
            "the model's output changes between training and eval mode; the exported step "
            "could reproduce only one of them"
        )
    return evaluated


def _check_targets(
    out: torch.Tensor, example_x: torch.Tensor, example_y: torch.Tensor | None, loss: str
) -> None:
    """Refuse a model output or `example_y` the loss (or the device's runtime) cannot take.

    Without this, a misfit surfaced as a tracing error deep in torch, or worse, as artifacts
    that export fine and that `sdk.ort` then refuses to load (it reads the class count, or for
    "mse" the feature count, off the output's last dimension and checks the targets' shape
    against it). A "ce" `example_y` must hold classes in [0, C) or `IGNORE_INDEX`.
    """
    if out.dim() < 1 or out.shape[0] != example_x.shape[0]:
        raise ExampleInputError(
            f"the model maps a batch of {example_x.shape[0]} to an output of shape "
            f"{list(out.shape)}; the output needs the same batch dimension first",
            f"output shape {list(out.shape)}",
        )
    if loss == "ce" and out.dim() < 2:
        raise ExampleInputError(
            f"loss 'ce' needs logits [B, ..., C], the model outputs {list(out.shape)}",
            f"output shape {list(out.shape)}",
        )
    if loss == "mse" and out.dim() < 2:
        # `sdk.ort` reads the output's size off its last dimension, and refused such artifacts
        # at load (`logits ['batch'] need a batch and a static last dimension`).
        reason = (
            f"output shape {list(out.shape)}: loss 'mse' needs outputs [B, ..., F] with a "
            f"feature dimension; add one, e.g. [B, 1]"
        )
        raise ExampleInputError(
            f"loss 'mse' needs outputs [B, ..., F], the model outputs {list(out.shape)}: add a "
            f"feature dimension, e.g. [B, 1] (unsqueeze(-1), or no squeeze(-1) in forward)",
            reason,
        )
    if loss == "ce" and out.dim() >= 3 and out.shape[1] == out.shape[-1]:
        # The graph reads a per-position output [B, T, C] with the classes last; torch's
        # cross_entropy (and so `sdk.trainer.TorchTrainer`) reads them from dimension 1. With
        # T == C both take the same targets and train different models, silently.
        raise ExportError(
            f"the model outputs {list(out.shape)}: cross-entropy on the device reads the "
            f"classes from the last dimension ([B, T, C]), sdk.trainer.TorchTrainer from "
            f"dimension 1 ([B, C, T]), and with both {out.shape[1]} the two would train "
            f"different models on the same labels; change the number of positions or classes"
        )
    if example_y is None:
        return
    want = list(out.shape[:-1] if loss == "ce" else out.shape)
    if list(example_y.shape) != want:
        reason = (
            f"example_y of shape {list(example_y.shape)}, the model's output "
            f"{list(out.shape)} takes targets of shape {want} with loss {loss!r}"
        )
        raise ExampleInputError(f"example_y does not fit the model: {reason}", reason)
    if loss == "ce":
        # Else the trace ran in full, and `_check_numbers` then blamed the batch size for
        # torch's `Target 5 is out of bounds.`
        classes = int(out.shape[-1])
        bad = (example_y != IGNORE_INDEX) & ((example_y < 0) | (example_y >= classes))
        if bool(bad.any()):
            reason = (
                f"example_y holds class {int(example_y[bad][0])}, the model's output "
                f"{list(out.shape)} has {classes} classes: labels must be in [0, {classes}) "
                f"(or {IGNORE_INDEX}, which is skipped)"
            )
            raise ExampleInputError(f"example_y does not fit the model: {reason}", reason)


# ---------------------------------------------------------------------------------------------
# onnxscript translations for the backward ops that torchlib leaves untranslated. They are
# trace-only: Python runs once per node with the attributes as Python values, building ONNX ops.
# ---------------------------------------------------------------------------------------------


def _ints(*values: int) -> Any:
    return op.Constant(value_ints=[int(v) for v in values])


def _unused() -> Any:
    # Stands in for a gradient the graph never asked for (output_mask False); the exporter's
    # optimizer drops it because nothing consumes it.
    return op.ConstantOfShape(_ints(0))


def _static(dim: Any, what: str) -> int:
    if not isinstance(dim, int):
        raise ExportError(f"{what} must have a static size to export its backward, got {dim!r}")
    return dim


def _convolution_backward(
    grad_output: Any,
    input: Any,
    weight: Any,
    bias_sizes: Any,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[Any, Any, Any]:
    """Gradients of a 2-d convolution: input by a transposed conv, weight by a conv, bias by sum.

    Shapes: grad_output [N, Co, Ho, Wo], input [N, Ci, H, W], weight [Co, Ci, kh, kw].
    """
    if transposed or groups != 1 or len(stride) not in (1, 2):
        raise ExportError("only 2-d, non-transposed, groups=1 convolutions are supported")
    # ATen may hand one value for both dimensions: `padding="valid"` arrives as [0].
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    kernel = [_static(weight.shape[2 + i], "kernel") for i in range(2)]
    grad_input: Any = None
    grad_weight: Any = None
    grad_bias: Any = None
    if output_mask[0]:
        # ConvTranspose can produce several input sizes for one output size (stride > 1 drops
        # rows); output_padding picks the one the forward saw.
        extra = []
        for i in range(2):
            size_in = _static(input.shape[2 + i], "convolution input")
            size_out = _static(grad_output.shape[2 + i], "convolution output")
            full = (size_out - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1
            extra.append(size_in - full)
        grad_input = op.ConvTranspose(
            grad_output,
            weight,
            strides=list(stride),
            pads=list(padding) * 2,
            dilations=list(dilation),
            output_padding=extra,
        )
    if output_mask[1]:
        # dW[co, ci] = sum_n x[n, ci] (*) dY[n, co]: a convolution with the batch as channels,
        # the input channels as batch, and stride and dilation swapping roles.
        x_t = op.Transpose(input, perm=[1, 0, 2, 3])
        g_t = op.Transpose(grad_output, perm=[1, 0, 2, 3])
        full_w = op.Conv(
            x_t, g_t, strides=list(dilation), dilations=list(stride), pads=list(padding) * 2
        )
        # When the stride does not divide the padded extent the correlation is one step too long.
        full_w = op.Slice(full_w, _ints(0, 0), _ints(*kernel), _ints(2, 3))
        grad_weight = op.Transpose(full_w, perm=[1, 0, 2, 3])
    if output_mask[2]:
        grad_bias = op.ReduceSum(grad_output, _ints(0, 2, 3), keepdims=0)
    return (
        grad_input if grad_input is not None else _unused(),
        grad_weight if grad_weight is not None else _unused(),
        grad_bias if grad_bias is not None else _unused(),
    )


def _max_pool2d_with_indices(
    self: Any,
    kernel_size: Sequence[int],
    stride: Sequence[int] = (),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    ceil_mode: bool = False,
) -> tuple[Any, Any]:
    """Max pooling that returns ONNX's flat indices (into the whole N*C*H*W tensor).

    torchlib converts them to torch's per-plane indices with a second pooling pass; the indices
    here only feed `_max_pool2d_with_indices_backward`, which wants them flat, so that pass (a
    tenth of the CNN's step time) is skipped.
    """
    kernel = _pair(kernel_size)
    strides = _pair(stride) if len(stride) else kernel
    pads = _pair(padding) * 2
    return op.MaxPool(  # type: ignore[no-any-return]
        self,
        kernel_shape=kernel,
        strides=strides,
        pads=pads,
        dilations=_pair(dilation),
        ceil_mode=int(ceil_mode),
    )


def _max_pool2d_with_indices_backward(
    grad_output: Any,
    self: Any,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
    indices: Any,
) -> Any:
    """Scatter-add each pooled gradient to the input element that won (flat indices)."""
    flat_grad = op.Reshape(grad_output, _ints(-1))
    flat_idx = op.Reshape(indices, _ints(-1))
    zeros = op.ConstantOfShape(op.Reshape(op.Size(self), _ints(1)))
    scattered = op.ScatterElements(zeros, flat_idx, flat_grad, axis=0, reduction="add")
    return op.Reshape(scattered, op.Shape(self))


def _avg_pool2d_backward(
    grad_output: Any,
    self: Any,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Any:
    """Spread each pooled gradient evenly over its window: a transposed conv with a box kernel."""
    if ceil_mode or divisor_override is not None:
        raise ExportError("avg_pool2d backward supports ceil_mode=False, divisor_override=None")
    kernel = _pair(kernel_size)
    strides = _pair(stride) if len(stride) else kernel
    pads = _pair(padding)
    height = _static(self.shape[2], "pooling input")
    width = _static(self.shape[3], "pooling input")
    out_h = _static(grad_output.shape[2], "pooling output")
    out_w = _static(grad_output.shape[3], "pooling output")
    grad = grad_output
    if count_include_pad or not any(pads):
        box = op.Constant(
            value=onnx.numpy_helper.from_array(
                _box_kernel(kernel, 1.0 / (kernel[0] * kernel[1])), "box"
            )
        )
    else:
        # Windows overlapping the padding average over fewer elements; count them with a conv of
        # ones (zero padding contributes nothing) and divide the gradient first.
        ones_in: Any = op.Constant(
            value=onnx.numpy_helper.from_array(_box_kernel((height, width), 1.0), "ones")
        )
        counts = op.Conv(
            ones_in,
            op.Constant(value=onnx.numpy_helper.from_array(_box_kernel(kernel, 1.0), "ones_k")),
            strides=strides,
            pads=pads * 2,
        )
        grad = op.Div(grad, counts)
        box = op.Constant(value=onnx.numpy_helper.from_array(_box_kernel(kernel, 1.0), "box"))
    shape = op.Shape(grad_output)
    planes = op.Concat(_ints(-1, 1), _ints(out_h, out_w), axis=0)
    extra = [
        size - ((n_out - 1) * s - 2 * p + k)
        for size, n_out, s, p, k in zip(
            (height, width), (out_h, out_w), strides, pads, kernel, strict=True
        )
    ]
    spread = op.ConvTranspose(
        op.Reshape(grad, planes), box, strides=strides, pads=pads * 2, output_padding=extra
    )
    out_shape = op.Concat(op.Slice(shape, _ints(0), _ints(2)), _ints(height, width), axis=0)
    return op.Reshape(spread, out_shape)


def _pair(values: Sequence[int] | int) -> list[int]:
    if isinstance(values, int):
        return [values, values]
    vals = [int(v) for v in values]
    return vals * 2 if len(vals) == 1 else vals


def _box_kernel(kernel: Sequence[int], value: float) -> Any:
    return np.full((1, 1, int(kernel[0]), int(kernel[1])), value, dtype=np.float32)


_TRAIN_TRANSLATIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    _A.convolution_backward.default: _convolution_backward,
    _A.max_pool2d_with_indices.default: _max_pool2d_with_indices,
    _A.max_pool2d_with_indices_backward.default: _max_pool2d_with_indices_backward,
    _A.avg_pool2d_backward.default: _avg_pool2d_backward,
}


# ---------------------------------------------------------------------------------------------
# The traced step functions.
# ---------------------------------------------------------------------------------------------


def _loss_fn(loss: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss == "ce":

        def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # Sequence models give [B, T, C]; the mean is then over all B*T targets.
            if out.dim() > 2:
                out = out.reshape(-1, out.shape[-1])
                y = y.reshape(-1)
            return nn.functional.cross_entropy(out, y)

        return ce
    if loss == "mse":
        return nn.functional.mse_loss
    raise ExportError(f"unknown loss {loss!r}; choose one of {SUPPORTED_LOSSES}")


class _Graph(nn.Module):
    """Holds a traced GraphModule so torch.export sees a module with plain tensor inputs."""

    def __init__(self, gm: nn.Module) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *args: torch.Tensor) -> Any:
        return self.gm(*args)


def _make_joint_step(
    model: nn.Module, names: list[str], loss: str, optimizer: str, momentum: float
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The traced function: one optimiser step, plus the batch's logits as a last output.

    Both artifacts are cut out of this one graph (the logits output is what the inference
    graph keeps), so one export serves both and their forward passes are the same ops.
    """
    loss_fn = _loss_fn(loss)
    n = len(names)

    def step(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params = args[:n]
        state = args[n : 2 * n] if optimizer == "momentum" else ()
        x, y, lr = args[-3:]
        leaves = [p.detach().requires_grad_(True) for p in params]
        with torch.enable_grad():
            out = functional_call(model, dict(zip(names, leaves, strict=True)), (x,))
            value = loss_fn(out, y)
            if optimizer == "momentum":
                grads = torch.autograd.grad(value, leaves)
            else:
                # Seeding the backward pass with lr (a scalar) yields lr * grad directly, so
                # the update is one Sub per tensor instead of a Mul and a Sub over every
                # weight: a tenth of the CNN's step. It rounds differently from torch's
                # lr * grad by about one float32 ulp.
                grads = torch.autograd.grad(value, leaves, grad_outputs=lr)
        if optimizer == "momentum":
            # torch.optim.SGD: buf = momentum * buf + g (buf starts at g, i.e. zeros here).
            # The buffer holds unscaled gradients so a changing lr behaves as in torch.
            new_state = tuple(momentum * m + g for m, g in zip(state, grads, strict=True))
            new_params = tuple(p.detach() - lr * m for p, m in zip(params, new_state, strict=True))
        else:
            new_state = ()
            new_params = tuple(p.detach() - g for p, g in zip(params, grads, strict=True))
        return (value.detach(), *new_params, *new_state, out.detach())

    return step


def _own_symbols() -> contextlib.AbstractContextManager[Any]:
    """A fake-tensor mode for `make_fx`'s symbolic trace in which every size gets a symbol of
    its own, or a no-op context where this torch has no such setting.

    By default the tracer gives sizes that are equal in the example the same symbol ("duck
    shaping"), so with an example batch equal to another size the trace reads it (the batch of
    4 as a LayerNorm(4)'s width on [B, T, 4], or the batch of 16 as an LSTM's hidden size) and
    torch.export then fixed the batch: the device could feed no other. `make_fx` traces in the
    fake mode active when it is called; `ShapeEnv(duck_shape=False)` is torch's switch for it
    (`torch.fx.experimental._config.use_duck_shape` is the global default it reads). Without
    it, `_fixed_batch` still refuses such graphs, naming an example batch size to use instead.
    """
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        return FakeTensorMode(allow_fallback_kernels=False, shape_env=ShapeEnv(duck_shape=False))
    except (ImportError, TypeError):  # a torch that moved or renamed them
        return contextlib.nullcontext()


# The ATen ops by which a traced forward checks the values of its tensors (`F.one_hot`'s
# decomposition asserts its ids are in [0, num_classes)); the exported graph keeps no check.
_DATA_CHECKS = ("_assert_async", "_functional_assert_async")


def _refuse_data_checks(gm: Any) -> None:
    """Raise `ExportError` if the trace `gm` holds a check torch makes on the data at run time.

    The ONNX export drops such a check, and with it torch's refusal: `F.one_hot` of an id
    outside [0, num_classes) raises in torch, where its exported form (an equality against
    `arange`) gives a row of zeros, and the device trained on it silently. Only called when no
    vocabulary is recorded for x: with one, the device refuses ids outside the embedding's
    rows before training (a model one-hot encoding the ids its embedding reads exports).
    """
    found: list[str] = []
    for node in gm.graph.nodes:
        packet = getattr(node.target, "overloadpacket", None)
        if node.op != "call_function" or getattr(packet, "__name__", "") not in _DATA_CHECKS:
            continue
        said = next((a for a in node.args if isinstance(a, str)), "")
        said = said.strip().rstrip(".") or str(node.target)
        if said not in found:
            found.append(said)
    if found:
        raise ExportError(
            f"the model's forward checks its values at run time ({'; '.join(found)}), which "
            f"the exported graph cannot do: the device would train on inputs torch refuses "
            f"(F.one_hot of an id outside [0, num_classes) gives a row of zeros there). Read "
            f"token ids with an nn.Embedding that takes x itself: the export then records its "
            f"rows and the device refuses ids past them; or pass the encoded features as float "
            f"inputs"
        )


def _export_joint(
    fn: Callable[..., Any],
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    batch_inputs: Sequence[int],
    model: nn.Module,
    ids_bounded: bool,
) -> tuple[onnx.ModelProto, dict[int, str]]:
    """Trace `fn` (which runs `model`) to ATen with a symbolic batch dimension and export it
    as one ONNX model; with it, the batch sizes past the trace's assumptions about the batch
    size (`_batch_guard_sizes`), for `_check_numbers`.

    Every size is traced as a symbol of its own (`_own_symbols`). Unless `ids_bounded` (the
    manifest records a vocabulary for x), a trace holding a check torch makes on the data is
    refused before the (slow) ONNX export (`_refuse_data_checks`)."""
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    try:
        with _own_symbols():
            gm = make_fx(fn, tracing_mode="symbolic", decomposition_table=_TRACE_DECOMPOSITIONS)(
                *args
            )
        if not ids_bounded:
            _refuse_data_checks(gm)
        batch = torch.export.Dim("batch", min=1, max=1 << 24)
        dynamic = tuple({0: batch} if i in batch_inputs else None for i in range(len(args)))
        with warnings.catch_warnings():
            # The exporter warns about its own internals (deprecations, torchvision ops it
            # skips); none of it concerns the caller, and pytest runs with warnings as errors.
            warnings.simplefilter("ignore")
            registration_log.setLevel(logging.ERROR)
            program = torch.onnx.export(
                _Graph(gm),
                args,
                dynamo=True,
                opset_version=OPSET,
                dynamic_shapes=(dynamic,),
                input_names=input_names,
                output_names=output_names,
                custom_translation_table=_TRAIN_TRANSLATIONS,
                verbose=False,
                external_data=False,
            )
    except ExportError:
        raise
    except Exception as exc:
        plain = _plain_tensors(model) if _NOT_FAKE in _chain_text(exc) else []
        if plain:
            # torch's words ("Please convert all Tensors to FakeTensors first ...") name
            # neither the tensor nor the fix.
            raise ExportError(
                f"the model keeps tensors as plain attributes ({', '.join(plain)}), neither "
                f"parameters nor buffers, and its forward reads them: the trace cannot take a "
                f"constant held that way. Build the tensor inside forward() (for a mask, "
                f"torch.tril(torch.ones(n, n)) there): buffers outside the supported layers are "
                f"not exported either"
            ) from exc
        missing = _missing_translation(exc)
        if missing:
            raise ExportError(
                f"no ONNX translation for {missing}: it comes from code outside the supported "
                f"layers, such as a functional call in a container's forward(); supported "
                f"layers: {_supported_names()}"
            ) from exc
        raise ExportError(f"export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        registration_log.setLevel(level)
    if program is None:
        raise ExportError("the exporter produced no program")
    traced = int(args[batch_inputs[0]].shape[0])
    try:
        guard_sizes = _batch_guard_sizes(gm, batch_inputs, traced)
    except Exception:  # torch's tracer internals, which change between versions
        guard_sizes = dict.fromkeys(_FALLBACK_SIZES, "")
    return program.model_proto, guard_sizes


# Batch sizes `_check_numbers` also runs when the trace's assumptions about the batch size
# cannot be read (`_batch_guard_sizes`): small ones, and the common training batch sizes.
_FALLBACK_SIZES = (2, 3, 8, 16, 32, 64)
# A guard's other side is checked up to this batch size (the check runs the model and the
# graphs at it, so its cost grows with it), and at most this many guard sizes, smallest first.
_MAX_GUARD_SIZE = 1024
_MAX_GUARD_SIZES = 6


def _batch_guard_sizes(gm: Any, batch_inputs: Sequence[int], traced: int) -> dict[int, str]:
    """Batch sizes on the other side of each assumption the trace made about the batch size,
    each with the assumption (``batch < 8``) for the error message.

    The tracer runs the model's Python once, at the example's batch size `traced`, and records
    as a guard each condition on a symbolic size that the Python branched on. A forward with
    ``if x.shape[0] >= 8: ...`` traced at 4 leaves ``batch < 8``: the graph then holds the
    other branch from 8 on. Harmless guards occur too (the MNIST CNN's trace has one,
    ``batch < 16``), so a guard is not refused; `_check_numbers` compares the graphs with torch
    at the smallest batch size where it fails. Guards over other symbols as well (spatial
    sizes, parameter shapes: static in the exported graph) are read with those at their traced
    values, and the batch dimensions of the other `batch_inputs` (y's, one batch dimension with
    x's in the exported graph) as the batch. For each guard, the smallest size in [1, `_MAX_GUARD_SIZE`] that breaks it is taken
    (among 1-64, powers of two and the neighbours of the guard's constants), and at most
    `_MAX_GUARD_SIZES` sizes, smallest first. A guard that cannot be read (a symbol without a
    traced value, an expression that does not evaluate to true or false), or a trace whose
    batch size is not symbolic, adds `_FALLBACK_SIZES` instead (as does any error reading the
    trace: `_export_joint`).
    """
    import sympy

    fallback = dict.fromkeys(_FALLBACK_SIZES, "")
    # An fx graph lists its inputs first, in argument order: node i is argument i's input node
    # (one that reads no other node). Anything else falls back.
    dims: list[torch.SymInt] = []
    for index in batch_inputs:
        node = next(itertools.islice(gm.graph.nodes, index, None), None)
        val = node.meta.get("val") if node is not None and not node.all_input_nodes else None
        dim = val.shape[0] if isinstance(val, torch.Tensor) and val.dim() else None
        if not isinstance(dim, torch.SymInt):
            return fallback
        dims.append(dim)
    env = dims[0].node.shape_env
    # Every size is traced as a symbol of its own (`_own_symbols`), and the trace's equalities
    # then replace some symbols by others after guards on them were recorded: each expression
    # is read in the symbols that stand for them at the end (`ShapeEnv.replace`). The trace
    # does not always find y's batch equal to x's (a per-position loss only sees their
    # products with the positions equal), while the exported graph has one batch dimension.
    batch = env.replace(dims[0].node.expr)
    if not isinstance(batch, sympy.Symbol):
        return fallback
    same = {env.replace(dim.node.expr) for dim in dims[1:]} - {batch}
    if not all(isinstance(sym, sympy.Symbol) for sym in same):
        return fallback
    as_batch = dict.fromkeys(same, batch)
    # The traced value of each symbol; torch 2.13 renamed `var_to_val` (now deprecated).
    values = getattr(env, "backed_var_to_val", None)
    if values is None:
        values = env.var_to_val
    found: dict[int, str] = {}
    unreadable = False
    for guard in env.guards:
        expr = env.replace(guard.expr).xreplace(as_batch)
        if batch not in expr.free_symbols:  # y's batch equal to x's: true once read so
            continue
        others = expr.free_symbols - {batch}
        if any(sym not in values for sym in others):
            unreadable = True
            continue
        fixed = expr.xreplace({sym: sympy.Integer(int(values[sym])) for sym in others})
        consts = {int(c) for c in fixed.atoms(sympy.Integer)}
        candidates = {
            v
            for v in (
                *range(1, 65),
                *(1 << k for k in range(_MAX_GUARD_SIZE.bit_length())),
                *(c + d for c in consts for d in (-1, 0, 1)),
            )
            if 1 <= v <= _MAX_GUARD_SIZE
        }
        try:
            if fixed.xreplace({batch: sympy.Integer(traced)}) is not sympy.true:
                unreadable = True  # it should hold where it was recorded
                continue
            broken = None
            for v in sorted(candidates):
                holds = fixed.xreplace({batch: sympy.Integer(v)})
                if holds is sympy.false:
                    broken = v
                    break
                if holds is not sympy.true:
                    raise TypeError(f"{holds} is not true or false")
        except Exception:  # sympy's own errors are many; the guard is unreadable either way
            unreadable = True
            continue
        if broken is not None and broken not in found:
            found[broken] = str(fixed.xreplace({batch: sympy.Symbol("batch")}))
    sizes = dict(sorted(found.items())[:_MAX_GUARD_SIZES])
    return {**fallback, **sizes} if unreadable else sizes


# What make_fx says when the traced code reads a real tensor it was not given (a tensor kept as
# a plain attribute of a module: `self.mask = torch.tril(...)`).
_NOT_FAKE = "Please convert all Tensors to FakeTensors"


def _chain_text(exc: BaseException) -> str:
    """The messages of `exc` and of its causes and contexts, joined."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    parts = []
    while pending:
        err = pending.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        parts.append(str(err))
        pending += [err.__cause__, err.__context__]
    return "\n".join(parts)


def _plain_tensors(model: nn.Module) -> list[str]:
    """Paths of the tensors `model`'s modules keep as plain attributes (not parameters or
    buffers: those live in `_parameters` and `_buffers`, not in the instance's `__dict__`)."""
    return [
        f"{path}.{name}" if path else name
        for path, module in model.named_modules()
        for name, value in vars(module).items()
        if isinstance(value, torch.Tensor)
    ]


_NO_TRANSLATION = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)'")


def _missing_translation(exc: BaseException) -> str | None:
    """The ATen op the exporter found no translation for, from its error chain, if any.

    The exporter's message is a page of generic advice with the op buried in it.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        err = pending.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        found = _NO_TRANSLATION.search(str(err))
        if found:
            return found.group(1)
        pending += [err.__cause__, err.__context__]
    return None


def _make_infer(model: nn.Module, names: list[str]) -> Callable[..., torch.Tensor]:
    n = len(names)

    def infer(*args: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return functional_call(  # type: ignore[no-any-return]
                model, dict(zip(names, args[:n], strict=True)), (args[n],)
            )

    return infer


def _cut(joint: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto | None:
    """The part of `joint` computing `outputs` from `inputs` alone, or None if it needs more."""
    model = onnx.utils.Extractor(joint).extract_model(inputs, outputs)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        # The exporter may read the shared batch size off `y` inside the forward pass (models
        # that build tensors of batch size, e.g. an RNN's initial state): then the forward
        # cannot be cut out without `y`.
        return None
    return model


def _fixed_batch(graph: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """The inputs and outputs of `graph` among `names` whose first (batch) dimension is not
    dynamic, each with its shape (``x [4, 6]``). `sdk.ort` refuses such a graph at load (it
    feeds batches of any size); a dimension with neither a name nor a size counts as dynamic,
    as there."""
    fixed = []
    for value in (*graph.graph.input, *graph.graph.output):
        if value.name not in names:
            continue
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
            fixed.append(f"{value.name} {shape}")
    return fixed


def _fixed_batch_message(
    what: str, fixed: list[str], model: nn.Module, example_x: torch.Tensor, out: torch.Tensor
) -> str:
    n = int(example_x.shape[0])
    sizes = {int(d) for p in model.parameters() for d in p.shape}
    sizes |= {int(d) for d in (*example_x.shape[1:], *out.shape[1:])}
    other = next(b for b in itertools.count(max(n + 1, 3)) if b not in sizes)
    return (
        f"{what}: the exported graph has a fixed batch size ({', '.join(fixed)}; traced at a "
        f"batch of {n}), where the device feeds batches of any size: the model's forward fixes "
        f"it (a reshape to a constant batch: compute such shapes from x.shape[0]), or the "
        f"tracer took the batch for another size it equals (a parameter's or the input's: "
        f"export with an example batch size that equals no dimension of the model, {other} "
        f"say)"
    )


def _check_loads(model: bytes, what: str) -> ort.InferenceSession:
    """Raise `ExportError` unless onnxruntime (what the device runs) accepts the graph; return
    the session, for `_check_numbers`.

    onnx's own checker skips shape inference, so a node with malformed attributes would only
    surface on the device; loading it here moves that failure to the export.
    """
    try:
        return ort.InferenceSession(
            model,
            session_options(threads=1, optimization="disable"),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime's errors are untyped
        raise ExportError(f"{what}: onnxruntime cannot load the exported graph: {exc}") from exc


# How far the exported graphs' numbers may be from torch's (`_check_numbers`), as a fraction of
# the reference's L2 norm: float32 rounding, reassociation and the lr-seeded backward keep a
# correct graph near 1e-6 (the 80-step LSTM included); a graph traced through another branch
# of the model's Python is off by a whole term (helper-194's batch-centring model: 0.48).
_NUMBERS_RTOL = 1e-3
# The absolute part, per parameter: `p - lr * g` rounds p to float32 (about 6e-8 of |p|), which
# a tiny update does not cover.
_NUMBERS_PTOL = 1e-6


def _mismatch(got: np.ndarray, want: np.ndarray, floor: float) -> float | None:
    """The relative L2 distance of `got` from `want` if it is past tolerance, else None."""
    got64 = np.asarray(got, dtype=np.float64)
    want64 = np.asarray(want, dtype=np.float64)
    if got64.shape != want64.shape:
        return math.inf
    if not (np.isfinite(got64).all() and np.isfinite(want64).all()):
        same = np.array_equal(got64, want64, equal_nan=True)
        return None if same else math.inf
    scale = float(np.linalg.norm(want64))
    err = float(np.linalg.norm(got64 - want64))
    if err <= _NUMBERS_RTOL * scale + floor:
        return None
    return err / max(scale, 1e-30)


def _check_numbers(
    model: nn.Module,
    names: list[str],
    params: tuple[torch.Tensor, ...],
    state: tuple[torch.Tensor, ...],
    example_x: torch.Tensor,
    example_y: torch.Tensor,
    loss: str,
    optimizer: str,
    momentum: float,
    sessions: dict[str, ort.InferenceSession],
    train_inputs: list[str],
    infer_inputs: list[str],
    guard_sizes: dict[int, str],
) -> None:
    """Raise `ExportError` unless the exported graphs compute what torch computes at batch
    sizes other than the traced one.

    The trace runs the model's Python once, at `example_x`'s batch size n with a symbolic batch
    dimension that the tracer assumes is at least 2: a forward branching on the batch size
    (``if x.shape[0] > 1: h = h - h.mean(0)``, or ``>= 8`` traced at 4) is exported with the
    branch of n, while the graph takes any batch from 1, so a device trained another model than
    torch did at the batch sizes past the branch. The graphs are checked at a batch of 1, of
    n + 1, and at each size of `guard_sizes` (`_batch_guard_sizes`: the other side of each
    assumption the tracer recorded about the batch size, with it for the message); a batch of m
    is example_x's rows (and example_y's) repeated to m. At each size the inference graph runs
    against the model's own forward (eval mode, no grad), and the training step against the
    same step function run eagerly (torch's autograd, this export's loss and optimizer;
    momentum buffers of zero). A difference past float32 rounding (`_NUMBERS_RTOL`) names the
    graph, the batch size, the traced one and the assumption, and the output.
    """
    n = int(example_x.shape[0])
    sizes = sorted({1, n + 1, *guard_sizes})
    p_np = [p.numpy() for p in params]
    step = _make_joint_step(model, names, loss, optimizer, momentum)
    lr = torch.tensor(0.1, dtype=torch.float32)
    labels = ["loss", *(f"new {name}" for name in names)]
    labels += [f"momentum buffer of {name}" for name in names][: len(state)]
    for size in sizes:
        rows = torch.arange(size) % n
        x, y = example_x[rows], example_y[rows]
        why = guard_sizes.get(size, "")
        with torch.no_grad():
            try:
                want = functional_call(model, dict(zip(names, params, strict=True)), (x,))
            except _MISFIT_ERRORS as exc:
                raise ExportError(
                    f"the model's forward refuses a batch of {size} ({_first_line(exc)}), "
                    f"while the exported graphs take any batch size from 1"
                ) from exc
            feeds = dict(zip(infer_inputs, [*p_np, x.numpy()], strict=True))
            got = _run(sessions["infer"], feeds, "infer", size, n)[0]
            off = _mismatch(got, want.numpy(), 1e-6 * math.sqrt(max(got.size, 1)))
            if off is not None:
                raise ExportError(_differs("infer", "logits", size, off, n, why))
        args = (*params, *state, x, y, lr)
        try:
            want_out = step(*args)
        except _MISFIT_ERRORS as exc:
            raise ExportError(
                f"the model's training step refuses a batch of {size} ({_first_line(exc)}), "
                f"while the exported graphs take any batch size from 1"
            ) from exc
        feeds = dict(zip(train_inputs, [a.detach().numpy() for a in args], strict=True))
        got_out = _run(sessions["train_step"], feeds, "train_step", size, n)
        for i, label in enumerate(labels):
            want_t = want_out[i].detach().numpy()
            floor = (
                1e-7
                if i == 0
                else _NUMBERS_PTOL * float(np.linalg.norm(params[(i - 1) % len(names)]))
            )
            if 0 < i <= len(names):
                # Compare the update, not the parameters, whose size would hide it.
                start = params[i - 1].numpy()
                off = _mismatch(got_out[i] - start, want_t - start, floor)
            else:
                off = _mismatch(got_out[i], want_t, floor)
            if off is not None:
                raise ExportError(_differs("train_step", label, size, off, n, why))


def _run(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], what: str, size: int, n: int
) -> list[np.ndarray]:
    """`session.run` for `_check_numbers`, with onnxruntime's (untyped) errors as `ExportError`:
    the device would hit the same error at that batch size."""
    try:
        return session.run(None, feeds)  # type: ignore[no-any-return]
    except Exception as exc:
        raise ExportError(
            f"{what}: onnxruntime cannot run the exported graph at a batch of {size} (traced "
            f"at a batch of {n}), while the device feeds batches of any size: "
            f"{_first_line(exc)}"
        ) from exc


def _differs(what: str, output: str, size: int, off: float, traced: int, why: str) -> str:
    assumed = f", where the tracer assumed {why}" if why else ""
    return (
        f"{what}: the exported graph's {output} at a batch of {size} differs from torch's by "
        f"{off:.3g} (relative L2); the graph was traced at a batch of {traced}{assumed}: the "
        f"model's forward changes with the batch size (a branch on x.shape[0], or a value "
        f"read off it in Python), which the graph, traced at another batch size, does not "
        f"reproduce; compute it with tensor ops or drop it"
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# The ONNX fields that only annotate: no runtime reads them (ONNX calls them human-readable
# documentation and free-form metadata), and the exporter fills them with build-machine detail.
_ANNOTATIONS = ("doc_string", "metadata_props")


def _strip_metadata(message: Message) -> None:
    """Clear every doc string and metadata property in an ONNX proto, at any depth, in place.

    The exporter annotates each node with the Python stack that made it (absolute paths into
    this repository and into site-packages), the fx node it came from and its module scope,
    and each input and output with torch.export's signature. onnxruntime reads none of it,
    and nothing in `sdk.ort` does either (names, types, shapes and opsets are all it checks).
    Left in, it puts the build machine's paths on every device, is most of each file's bytes,
    and makes the files' SHA-256 depend on where Plume is installed and on how many graphs the
    process traced before (the fx code keys in the stack traces count up). The walk is generic
    so that subgraphs, functions and tensors in attributes are covered as well. Names, types,
    shapes, constants, opset imports and the producer fields (fixed strings) are kept.
    """
    for field, value in message.ListFields():
        if field.name in _ANNOTATIONS:
            message.ClearField(field.name)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in [value] if isinstance(value, Message) else value:
                if isinstance(item, Message):  # ONNX has no map fields; keys would be str
                    _strip_metadata(item)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Bytes of the random token in a temporary's name (`.<name>.<token hex>.tmp`).
_TOKEN_BYTES = 4


def _remove_stale_temps(out: Path, files: dict[str, bytes]) -> None:
    """Remove the temporaries an earlier `_write_files` into `out` left when it was killed (no
    `except` runs on SIGKILL or a power loss): entries named exactly `.<name>.<token>.tmp`,
    for a `name` of `files` and a token of `_TOKEN_BYTES` lower-case hex bytes, that are not
    folders (a symlink is removed, not its target). Nothing else in `out` is touched. An export
    running at the same time into the same folder can lose its temporaries and then fails
    (`OutputError`, cleaning up): two exports into one folder would mix their files anyway."""
    names = "|".join(re.escape(name) for name in files)
    stale = re.compile(rf"\.(?:{names})\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp", re.ASCII)
    try:
        entries = list(os.scandir(out))
    except OSError:
        return  # the writes below report an unreadable folder
    for entry in entries:
        try:
            if stale.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        except OSError:  # gone already, or not ours to remove: it only takes space
            pass


def _write_files(out: Path, files: dict[str, bytes]) -> None:
    """Write `files` (name -> bytes) into folder `out`, creating it, all or nothing.

    Everything is written to hidden temporary names first (each fsynced) and renamed into place
    only once all of it is on disk, the manifest last (it holds the others' digests); the folder
    is fsynced after the renames, as `sdk.device_store` does. A failure (`OutputError`,
    or an interrupt) removes the temporaries, any file already renamed into a folder this call
    created, and the folders it created, so a failed export leaves no partial artifacts behind.
    The temporaries of an export killed outright (where no cleanup runs) are removed by the
    next export into the folder (`_remove_stale_temps`).
    Over an older export, a failure between two renames leaves the old manifest, whose digests
    then refuse the new graphs at load (`sdk.ort.ArtifactError`) rather than mixing the two.
    """
    created = []
    parent = out
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    token = secrets.token_hex(_TOKEN_BYTES)
    temps = {name: out / f".{name}.{token}.tmp" for name in files}
    placed: list[Path] = []
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create the output folder {out} ({exc.strerror or exc})"
            ) from exc
        _remove_stale_temps(out, files)
        try:
            for name, data in files.items():
                with temps[name].open("xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())  # on disk before any rename makes it an artifact
            for name, temp in temps.items():
                os.replace(temp, out / name)
                placed.append(out / name)
            _fsync_dir(out)  # the renames: a power loss must not bring back the old names
        except OSError as exc:
            raise OutputError(
                f"cannot write the artifacts into {out} ({exc.strerror or exc})"
            ) from exc
    except BaseException:  # an OutputError, or an interrupt (Ctrl-C) halfway: clean up alike
        for path in [*temps.values(), *(placed if created else [])]:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # e.g. `out` never became a folder: there is nothing to remove
                pass
        for folder in created:  # innermost first; rmdir leaves a folder someone else filled
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def export_training_artifacts(
    model: nn.Module,
    example_x: torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    loss: str = "ce",
    optimizer: str = "sgd",
    momentum: float = 0.9,
    example_y: torch.Tensor | None = None,
    model_name: str = "",
) -> ExportResult:
    """Write ``infer.onnx``, ``train_step.onnx`` and ``manifest.json`` for `model` to `out_dir`.

    `example_x` is one batch (float32 [B, ...], or int64 token ids for embedding models); its
    batch size does not matter as long as B >= 2 (the tracer fixes a size of 1): the batch
    dimension is traced as a symbol of its own, so a B equal to a layer's width or to another
    dimension of x is fine (`_own_symbols`), and exported dynamic. Graphs whose x, y or logits
    came out with a fixed batch anyway are refused (`ExportError` naming a batch size to use).
    `loss` is ``"ce"`` (integer class targets [B] or [B, T], mean-reduced) or ``"mse"``
    (float targets shaped like the output, which needs a feature dimension: [B, F] or
    [B, ..., F], mean-reduced). `optimizer` is ``"sgd"`` or ``"momentum"`` (torch.optim.SGD
    semantics, no dampening, no Nesterov, buffers starting at zero).

    Raises, before tracing anything or touching `out_dir`: `UnsupportedLayerError` if the model
    holds a layer the graph does not support, `ExampleInputError` if the model's forward pass
    refuses `example_x`, its output does not fit the loss, or `example_y` does not fit its
    output (its shape, or for "ce" a class outside [0, C) other than -100). After tracing,
    `ExportError` if the graphs differ from torch (`_check_numbers`), or if the forward checks
    its values in a way the graph cannot (``F.one_hot``: `_refuse_data_checks`) and no
    `nn.Embedding` bounds x's ids. `OutputError` if the files cannot be written; nothing is
    left half-written in `out_dir` (see `_write_files`).
    """
    if loss not in SUPPORTED_LOSSES:
        raise ExportError(f"unknown loss {loss!r}; choose one of {SUPPORTED_LOSSES}")
    if optimizer not in SUPPORTED_OPTIMIZERS:
        raise ExportError(f"unknown optimizer {optimizer!r}; choose one of {SUPPORTED_OPTIMIZERS}")
    if not (0.0 <= momentum < 1.0) or not math.isfinite(momentum):
        raise ExportError(f"momentum must be in [0, 1), got {momentum}")
    if example_x.dim() < 1 or example_x.shape[0] < 2:
        raise ExportError("example_x needs a batch dimension of at least 2")
    # The manifest (and so the device) knows only these dtypes: anything else would export
    # artifacts that `sdk.ort` refuses to load.
    if example_x.dtype not in (torch.float32, torch.int64):
        raise ExportError(f"example_x must be float32 or int64 (token ids), not {example_x.dtype}")
    target = torch.int64 if loss == "ce" else torch.float32
    if example_y is not None and example_y.dtype != target:
        raise ExportError(f"loss {loss!r} takes {target} targets, example_y is {example_y.dtype}")
    check_supported(model)
    # Otherwise the forward check below would blame example_x for the model's dtype.
    wide = [(n, p.dtype) for n, p in model.named_parameters() if p.dtype != torch.float32]
    if wide:
        name, dtype = wide[0]
        raise ExportError(
            f"parameter {name!r} is {str(dtype).removeprefix('torch.')}: the device trains "
            f"float32 parameters; convert the model with model.float()"
        )
    float_vocab = _float_id_vocabulary(model, example_x)
    example_out = _checked_forward(model, example_x)
    _check_targets(example_out, example_x, example_y, loss)

    was_training = model.training
    model.eval()  # no dropout or batchnorm is supported, but keep the trace deterministic
    try:
        return _export(
            model,
            example_x,
            example_out,
            Path(out_dir),
            loss,
            optimizer,
            momentum,
            example_y,
            model_name,
            float_vocab,
        )
    finally:
        model.train(was_training)


def _export(
    model: nn.Module,
    example_x: torch.Tensor,
    example_out: torch.Tensor,
    out: Path,
    loss: str,
    optimizer: str,
    momentum: float,
    example_y: torch.Tensor | None,
    model_name: str,
    float_vocab: int | None,
) -> ExportResult:
    named = [(n, p.detach().to(torch.float32).clone()) for n, p in model.named_parameters()]
    names = [n for n, _ in named]
    params = tuple(p for _, p in named)
    spec = ModelSpec.from_shapes((n, tuple(p.shape)) for n, p in named)
    vocab = input_vocabulary(model, example_x) if example_x.dtype == torch.int64 else float_vocab

    if example_y is None:
        if loss == "ce":
            shape = example_out.shape[:-1]
            example_y = torch.zeros(shape, dtype=torch.int64)
        else:
            example_y = torch.zeros_like(example_out)
    lr = torch.tensor(0.1, dtype=torch.float32)

    param_inputs = [f"p{i}" for i in range(len(names))]
    state_inputs = [f"m{i}" for i in range(len(names))] if optimizer == "momentum" else []
    train_inputs = [*param_inputs, *state_inputs, "x", "y", "lr"]
    train_outputs = [
        "loss",
        *(f"new_{n}" for n in param_inputs),
        *(f"new_{n}" for n in state_inputs),
    ]
    state = tuple(torch.zeros_like(p) for p in params) if optimizer == "momentum" else ()
    train_args = (*params, *state, example_x, example_y, lr)
    n_in = len(train_args)

    # The model itself is traced (a copy cannot stand in for one whose hooks or closures
    # reach its layers), and its slots are put back after each trace (`restored_slots`).
    with restored_slots(model):
        joint, guard_sizes = _export_joint(
            _make_joint_step(model, names, loss, optimizer, momentum),
            train_args,
            train_inputs,
            [*train_outputs, "logits"],
            batch_inputs=(n_in - 3, n_in - 2),
            model=model,
            ids_bounded=vocab is not None,
        )
    train_model = _cut(joint, train_inputs, train_outputs)
    if train_model is None:
        raise ExportError("the training step could not be separated from the joint graph")
    infer_inputs = [*param_inputs, "x"]
    infer_model = _cut(joint, infer_inputs, ["logits"])
    if infer_model is None:
        with restored_slots(model):
            infer_model, more = _export_joint(
                _make_infer(model, names),
                (*params, example_x),
                infer_inputs,
                ["logits"],
                batch_inputs=(len(params),),
                model=model,
                ids_bounded=vocab is not None,
            )
        guard_sizes = {**more, **guard_sizes}
    for what, graph, names_ in (
        ("train_step", train_model, ("x", "y")),
        ("infer", infer_model, ("x", "logits")),
    ):
        fixed = _fixed_batch(graph, names_)
        if fixed:
            raise ExportError(_fixed_batch_message(what, fixed, model, example_x, example_out))
    blobs: dict[str, bytes] = {}
    sessions: dict[str, ort.InferenceSession] = {}
    for what, graph in (("train_step", train_model), ("infer", infer_model)):
        _strip_metadata(graph)  # before the load check: what is checked is what is written
        # The bytes onnx.save_model writes for a model without external data.
        blobs[what] = graph.SerializeToString()
        sessions[what] = _check_loads(blobs[what], what)
    with restored_slots(model):
        _check_numbers(
            model,
            names,
            params,
            state,
            example_x,
            example_y,
            loss,
            optimizer,
            momentum,
            sessions,
            train_inputs,
            infer_inputs,
            guard_sizes,
        )
    files = {
        what: {
            "path": f"{what}.onnx",
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for what, data in blobs.items()
    }
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "model": model_name or type(model).__name__,
        # Whether `model` is the caller's name for it, which `sdk.Client` compares with the
        # task's model name; the class name that stands in otherwise names no task's model.
        "model_named": bool(model_name),
        "opset": OPSET,
        "loss": loss,
        "optimizer": {"name": optimizer, "momentum": momentum if optimizer == "momentum" else 0.0},
        "spec": spec.to_json(),
        "spec_fingerprint": spec.fingerprint.hex(),
        "num_params": spec.size,
        "param_inputs": param_inputs,
        "state_inputs": state_inputs,
        "x": {
            "name": "x",
            "dtype": str(example_x.dtype).removeprefix("torch."),
            "shape": ["batch", *example_x.shape[1:]],
            # Token ids (int64, or float32 read through x.long()): the rows of the embedding
            # reading x, so that `sdk.ort` refuses an id past them before training
            # (onnxruntime's gather failed mid-run, and read a float -1 as the last row).
            **({"vocab": vocab} if vocab is not None else {}),
        },
        "y": {
            "name": "y",
            "dtype": str(example_y.dtype).removeprefix("torch."),
            "shape": ["batch", *example_y.shape[1:]],
        },
        "lr": "lr",
        "train_outputs": train_outputs,
        "infer_outputs": ["logits"],
        "files": files,
        "batch": "dynamic: a last partial batch is one smaller step, as torch with drop_last=False",
    }
    _write_files(
        out,
        {
            **{f"{what}.onnx": data for what, data in blobs.items()},
            "manifest.json": (json.dumps(manifest, indent=2) + "\n").encode(),
        },
    )
    return ExportResult(out, manifest, spec)
