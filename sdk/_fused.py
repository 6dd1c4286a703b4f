"""An autograd-free SGD step for models that are a chain of Conv2d, ReLU, MaxPool2d(2), Flatten
and Linear layers, trained with cross-entropy: `TorchTrainer`'s fast path (`fused=True`).

The step calls the aten kernels autograd would call (`convolution`, `convolution_backward`,
`_log_softmax`, `nll_loss_forward` and their backward functions, oneDNN's inner product for
large Linear layers) in a fixed order, with no autograd graph, no per-step module dispatch and
no gradient tensors kept: each parameter is updated in place as soon as its gradient is known.
Two rewrites make it cheaper than the module's own forward and backward:

- ReLU followed by 2x2 max pooling runs as pooling then ReLU. max(relu(a)) = relu(max(a))
  exactly, and the gradient reaches the same element: where the window's maximum is positive
  both orders pick it by the same first-index rule; where it is not, ReLU's gradient is zero
  either way. The ReLU pass and its backward then touch a quarter of the elements.
The step does autograd's arithmetic in autograd's order: a real MNIST client's five epochs
came out bit-identical to the autograd path on the machine measured (bench/explore_cnn_speed.py,
"fused"), though a BLAS is free to round the transposed weight-gradient product differently.

Opt-in (`fold_update=True`): a Linear layer with at least `FUSED_UPDATE_MIN_WEIGHTS` weights
takes its SGD update inside the weight-gradient product (`W.addmm_(g.T, x, alpha=-lr)`): no
gradient tensor of the weight's size is written and read back. This changes the float rounding
of that update (the MNIST CNN's trained parameters differ from the autograd path's by about
1e-7 relative), so results no longer reproduce the autograd path's bit for bit.

`fused_chain` decides, strictly, whether a module qualifies; anything it does not recognise
trains through autograd as before. Which layers a module's forward runs is never guessed from
its code: an exact `nn.Sequential` (its `forward` not replaced on the instance) is its layers;
any other module qualifies only if it declares its chain with a method

    def fused_layers(self) -> Sequence[nn.Module]:
        return [self.conv1, self.relu, self.pool, self.flatten, self.fc]

returning the layers its forward applies, in order, each to the previous one's output alone
(a plain `nn.Sequential` in the list stands for its layers; a subclass that overrides
forward must declare again: an inherited declaration does not count; a parameter-free layer may appear
more than once; returning None declares nothing, for a module whose forward is a chain only
in some configurations). The author promises that forward is exactly that chain: nothing
checks it, so a forward that does anything else (an extra op, a `torch.no_grad()` block, a
side effect such as keeping its features) must not declare one. The declaration, like every
other condition (layer settings, parameters, hooks), is read again on every `train` call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._conv import unfold_conv_backward, unfold_grad_conv
from ._data import IGNORE_INDEX
from ._maxpool import _is_plain_2x2

__all__ = ["FusedChain", "fused_chain", "LARGE_LINEAR_WEIGHTS", "FUSED_UPDATE_MIN_WEIGHTS"]

# Linear layers with at least this many weights run on oneDNN (with `onednn`), here and on the
# autograd path (`sdk.trainer.ONEDNN_LINEAR_MIN_WEIGHTS` is this number).
LARGE_LINEAR_WEIGHTS = 1 << 16
# ... and, with `fold_update`, take their SGD update inside the weight-gradient product
# (addmm_) from this many weights on.
FUSED_UPDATE_MIN_WEIGHTS = 1 << 16

_aten = torch.ops.aten


def _has_hooks(module: nn.Module) -> bool:
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    if any(getattr(module, name, None) for name in hook_dicts):
        return True
    for p in module.parameters(recurse=False):
        if getattr(p, "_backward_hooks", None) or getattr(p, "_post_accumulate_grad_hooks", None):
            return True
    return False


def _global_hooks() -> bool:
    from torch.nn.modules import module as nn_module

    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return any(getattr(nn_module, name, None) for name in names)


def _supported_layer(m: nn.Module) -> bool:
    """A layer of exactly one of the supported classes (no subclass), in a configuration the
    fused step computes as torch does."""
    kind = type(m)
    if kind is nn.ReLU:
        return True
    if kind is nn.MaxPool2d:
        return _is_plain_2x2(m)  # type: ignore[arg-type]
    if kind is nn.Flatten:
        return m.start_dim == 1 and m.end_dim == -1  # type: ignore[return-value]
    if kind is nn.Linear:
        return True
    if kind is nn.Conv2d:
        conv: nn.Conv2d = m  # type: ignore[assignment]
        return (
            conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and not conv.transposed
            and all(isinstance(v, int) for v in (*conv.padding, *conv.stride, *conv.dilation))
        )
    return False


DECLARATION = "fused_layers"


def _flattened(layers: Sequence[nn.Module]) -> list[nn.Module] | None:
    """The layers, with each plain `nn.Sequential` among them replaced by its own layers."""
    out: list[nn.Module] = []
    for child in layers:
        if not isinstance(child, nn.Module):
            return None
        if type(child) is nn.Sequential:
            inner = _flattened(list(child))
            if inner is None:
                return None
            out += inner
        else:
            out.append(child)
    return out


# What calling a module runs besides `forward`: replaced anywhere (on its class or the
# instance), the call is no longer the declared chain.
_CALL_PATH = ("__call__", "_call_impl", "_wrapped_call_impl")


def _plain_call(module: nn.Module) -> bool:
    """Calling `module` runs `nn.Module`'s own call path into its `forward`."""
    return not any(name in module.__dict__ for name in ("forward", *_CALL_PATH)) and all(
        getattr(type(module), name) is getattr(nn.Module, name) for name in _CALL_PATH
    )


def _definer(cls: type, name: str) -> type:
    """The class in `cls`'s method resolution order that defines attribute `name`."""
    return next(c for c in cls.__mro__ if name in c.__dict__)


def _declared_layers(module: nn.Module) -> list[nn.Module] | None:
    """The chain `module`'s forward runs: an exact `nn.Sequential` (its forward not replaced on
    the instance) is its layers; any other module qualifies only by declaring its chain with a
    `fused_layers()` method (the module docstring). Nothing is traced or run."""
    if not _plain_call(module):
        return None
    if type(module) is nn.Sequential:
        return _flattened(list(module))
    declare = getattr(type(module), DECLARATION, None)
    if not callable(declare) or not issubclass(
        _definer(type(module), DECLARATION), _definer(type(module), "forward")
    ):
        return None  # a subclass that overrides forward does not inherit a declaration
    layers = declare(module)
    if isinstance(layers, (str, bytes, nn.Module)) or not isinstance(layers, Sequence):
        return None
    return _flattened(layers)


def _tree_supported(module: nn.Module) -> bool:
    """Every submodule is a supported layer or a plain `nn.Sequential`, none has its forward
    replaced on the instance or holds a buffer; a root that is not an `nn.Sequential` (a module
    declaring its chain) owns no parameter itself."""
    for sub in module.modules():
        if not _plain_call(sub) or any(True for _ in sub.buffers(recurse=False)):
            return False
        if sub is module and type(sub) is not nn.Sequential:
            if any(True for _ in sub.parameters(recurse=False)):
                return False
            continue
        if type(sub) is not nn.Sequential and not _supported_layer(sub):
            return False
    return True


@dataclass
class _Op:
    kind: str  # "conv", "linear", "relu", "pool", "flatten"
    layer: nn.Module | None = None


@dataclass
class FusedChain:
    """A recognised chain, as the ops the step runs (ReLU before pooling already swapped)."""

    ops: list[_Op]
    params: list[torch.Tensor]
    signature: tuple[Any, ...]
    onednn: bool = False
    fold_update: bool = False
    unfold_conv: bool = False
    _saved: list[Any] = field(default_factory=list)
    _buffers: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    _dlogits: torch.Tensor | None = None

    def fits(self, example_shape: tuple[int, ...]) -> bool:
        """True if an input of per-example shape `example_shape` (float32) flows through
        every op in a shape the fused step handles, ending in logits [B, C]."""
        shape = (1, *example_shape)
        for op in self.ops:
            if op.kind == "conv":
                conv: nn.Conv2d = op.layer  # type: ignore[assignment]
                if len(shape) != 4 or shape[1] != conv.in_channels:
                    return False
                size = []
                pads: tuple[int, ...] = conv.padding  # type: ignore[assignment]  # not a str here
                geometry = zip(
                    shape[2:], conv.kernel_size, conv.stride, pads, conv.dilation, strict=True
                )
                for dim, k, s, p, d in geometry:
                    out = (dim + 2 * p - d * (k - 1) - 1) // s + 1
                    if out < 1:
                        return False
                    size.append(out)
                shape = (shape[0], conv.out_channels, *size)
            elif op.kind == "linear":
                lin: nn.Linear = op.layer  # type: ignore[assignment]
                if len(shape) != 2 or shape[1] != lin.in_features:
                    return False
                shape = (shape[0], lin.out_features)
            elif op.kind == "pool":
                if len(shape) != 4 or shape[2] % 2 or shape[3] % 2 or shape[2] == 0:
                    return False
                shape = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
            elif op.kind == "flatten":
                if len(shape) < 2:
                    return False
                shape = (shape[0], math.prod(shape[1:]))
        return len(shape) == 2 and shape[1] >= 1

    def _buffer(self, i: int, n: int, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Op `i`'s buffers, of these per-example shapes, as views of their first `n` examples:
        one set per op, sized to the largest batch seen (kept while the per-example shapes
        stay the same), so a batch of any size reuses it."""
        bufs = self._buffers.get(i)
        if bufs is None or len(bufs[0]) < n or [b.shape[1:] for b in bufs] != shapes:
            bufs = self._buffers[i] = [torch.empty(n, *s, dtype=torch.float32) for s in shapes]
        return [b[:n] for b in bufs]

    def release(self) -> None:
        """Drop what one step keeps between its forward and backward (its inputs and masks)."""
        self._saved = []
        self._dlogits = None

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward pass and mean cross-entropy on one batch (under `torch.no_grad`); keeps what
        `backward_update` needs. Returns the loss (NaN for a batch with no counted target)."""
        saved: list[Any] = []
        h = x
        owned = False  # h is ours to overwrite (not the caller's input or a view of it)
        large = LARGE_LINEAR_WEIGHTS
        for i, op in enumerate(self.ops):
            if op.kind == "conv":
                conv: nn.Conv2d = op.layer  # type: ignore[assignment]
                saved.append(h)
                h = _aten.convolution(
                    h, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                    False, [0, 0], conv.groups,
                )  # fmt: skip
                owned = True
            elif op.kind == "linear":
                lin: nn.Linear = op.layer  # type: ignore[assignment]
                saved.append(h)
                if self.onednn and lin.weight.numel() >= large:
                    h = torch.ops.mkldnn._linear_pointwise(h, lin.weight, lin.bias, "none", [], "")
                elif lin.bias is not None:
                    h = torch.addmm(lin.bias, h, lin.weight.t())
                else:
                    h = h.mm(lin.weight.t())
                owned = True
            elif op.kind == "relu":
                h = h.relu_() if owned else torch.relu(h)
                owned = True
                saved.append(h)
            elif op.kind == "pool":
                h, masks = self._pool_forward(i, h)
                saved.append(masks)
                owned = True
            else:  # flatten
                saved.append(h.shape)
                h = h.reshape(h.shape[0], -1)
        logp = torch._log_softmax(h, 1, False)
        loss, total_weight = _aten.nll_loss_forward(logp, y, None, 1, IGNORE_INDEX)
        ones = torch.ones((), dtype=h.dtype)
        dnll = _aten.nll_loss_backward(ones, logp, y, None, 1, IGNORE_INDEX, total_weight)
        self._dlogits = torch._log_softmax_backward_data(dnll, logp, 1, h.dtype)
        self._saved = saved
        return float(loss)

    def backward_update(self, lr: float) -> None:
        """Backward through the batch of the last `forward_loss`, each parameter updated in
        place by plain SGD (p -= lr * grad) once its gradient is known."""
        g = self._dlogits
        assert g is not None
        saved = self._saved
        large = LARGE_LINEAR_WEIGHTS
        for i in range(len(self.ops) - 1, -1, -1):
            op, s = self.ops[i], saved[i]
            need_input = i > 0
            if op.kind == "conv":
                conv: nn.Conv2d = op.layer  # type: ignore[assignment]
                has_bias = conv.bias is not None
                if self.unfold_conv and unfold_grad_conv(conv):
                    # as `TorchTrainer`'s autograd path runs it under `sdk._conv.unfold_conv`
                    gi, gw, gb = unfold_conv_backward(g, s, conv.weight, conv, need_input, has_bias)
                else:
                    gi, gw, gb = _aten.convolution_backward(
                        g, s, conv.weight, [conv.out_channels] if has_bias else None,
                        conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups,
                        [need_input, True, has_bias],
                    )  # fmt: skip
                conv.weight.add_(gw, alpha=-lr)
                if conv.bias is not None and gb is not None:
                    conv.bias.add_(gb, alpha=-lr)
                g = gi
            elif op.kind == "linear":
                lin: nn.Linear = op.layer  # type: ignore[assignment]
                big = lin.weight.numel() >= large
                gi = None
                if need_input:  # before the update: the input gradient reads the old weights
                    if self.onednn and big:
                        gi = torch.ops.mkldnn._linear_pointwise(
                            g, lin.weight.t(), None, "none", [], ""
                        )
                    elif s.stride(0) == 1 and s.stride(1) == s.size(0):
                        # autograd's mm_mat1_backward for an input it sees as column-major (a
                        # [1, 1] input, say): (W^T g^T)^T, which can round differently
                        gi = lin.weight.t().mm(g.t()).t()
                    else:
                        gi = g.mm(lin.weight)
                if lin.bias is not None:
                    lin.bias.add_(g.sum(0), alpha=-lr)
                if self.fold_update and lin.weight.numel() >= FUSED_UPDATE_MIN_WEIGHTS:
                    lin.weight.addmm_(g.t(), s, alpha=-lr)
                elif self.onednn and big:  # the product `_OneDnnLinear`'s backward runs
                    gw = torch.ops.mkldnn._linear_pointwise(g.t(), s.t(), None, "none", [], "")
                    lin.weight.add_(gw, alpha=-lr)
                else:
                    lin.weight.add_(g.t().mm(s), alpha=-lr)
                g = gi
            elif op.kind == "relu":
                g = _aten.threshold_backward(g, s, 0)
            elif op.kind == "pool":
                g = self._pool_backward(g, s)
            else:  # flatten
                g = g.view(s)
            if g is None:
                break
        self._saved = []
        self._dlogits = None

    def _pool_forward(self, i: int, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`sdk._maxpool.MaxPool2x2`'s forward (the same values and tie rule) into buffers
        reused from step to step."""
        n, c, hh, w = h.shape
        h = h.contiguous()
        shapes = [
            (c, hh, w // 2),  # take_right
            (c, hh, w // 2),  # row maxima
            (c, hh // 2, w // 2),  # take_bottom
            (c, hh // 2, w // 2),  # output
            (c, hh // 2, 2, w // 2),  # backward: per-row gradient
            (c, hh, w // 2, 2),  # backward: input gradient
        ]
        bufs = self._buffer(i, n, shapes)
        take_right, rows, take_bottom, out = bufs[:4]
        pairs = h.view(n, c, hh, w // 2, 2)
        left, right = pairs[..., 0], pairs[..., 1]
        torch.sub(right, left, out=take_right).gt_(0)  # 1.0 where the right one is larger
        torch.maximum(left, right, out=rows)
        by_row = rows.view(n, c, hh // 2, 2, w // 2)
        top, bottom = by_row[:, :, :, 0], by_row[:, :, :, 1]
        torch.sub(bottom, top, out=take_bottom).gt_(0)
        torch.maximum(top, bottom, out=out)
        return out, bufs

    @staticmethod
    def _pool_backward(g: torch.Tensor, bufs: list[torch.Tensor]) -> torch.Tensor:
        take_right, _, take_bottom, _, rows, out = bufs
        n, c, hh, w2 = take_right.shape
        g = g.contiguous()
        torch.mul(g, take_bottom, out=rows[:, :, :, 1])
        torch.sub(g, rows[:, :, :, 1], out=rows[:, :, :, 0])
        per_row = rows.view(n, c, hh, w2)
        torch.mul(per_row, take_right, out=out[..., 1])
        torch.sub(per_row, out[..., 1], out=out[..., 0])
        return out.view(n, c, hh, 2 * w2)


_KINDS = {
    nn.Conv2d: "conv",
    nn.Linear: "linear",
    nn.ReLU: "relu",
    nn.MaxPool2d: "pool",
    nn.Flatten: "flatten",
}


def fused_chain(
    module: nn.Module,
    onednn: bool,
    cached: FusedChain | None = None,
    fold_update: bool = False,
    unfold_conv: bool = False,
) -> FusedChain | None:
    """The fused step for `module`, or None if it does not qualify: every submodule a supported
    layer (`nn.Conv2d` with zero padding given in numbers, `nn.ReLU`, `nn.MaxPool2d(2)`,
    `nn.Flatten()`, `nn.Linear`, exact classes) or a plain `nn.Sequential`; the forward exactly
    the chain of them: an exact `nn.Sequential`, or a module declaring its chain with
    `fused_layers()` (the module docstring); no `forward` replaced on an instance; no hook on
    any module or parameter (nor a global module hook); every parameter an exact `nn.Parameter`,
    float32, on the CPU, trainable, contiguous and used by one layer once. Every condition is
    checked on each call (they are cheap: nothing is traced), so a parameter frozen or a layer
    reconfigured after a call is seen; `cached` (the last call's answer) is returned, with its
    pooling buffers, when the chain is the same layer and parameter objects.
    `fold_update`: large Linear layers' SGD update inside their weight-gradient product (the
    module docstring). `unfold_conv`: one-input-channel convolutions take their weight and bias
    gradients from `sdk._conv.unfold_conv_backward`, as the autograd path does under
    `sdk._conv.unfold_conv`."""
    if _global_hooks() or any(_has_hooks(m) for m in module.modules()):
        return None
    if not _tree_supported(module):
        return None
    layers = _declared_layers(module)
    if not layers:
        return None
    ops: list[_Op] = []
    seen: set[int] = set()
    params: list[torch.Tensor] = []
    for layer in layers:
        kind = _KINDS.get(type(layer))  # type: ignore[call-overload]
        if (
            kind is None
            or not _supported_layer(layer)
            or "forward" in layer.__dict__
            or _has_hooks(layer)
            or any(True for _ in layer.buffers())
        ):
            return None
        own = list(layer.parameters())
        if own:
            if id(layer) in seen:
                return None  # weight sharing: one update per use would not be SGD's
            seen.add(id(layer))
            params += own
        ops.append(_Op(kind, layer if own else None))
    if ops[-1].kind != "linear":
        return None
    ids = [id(p) for p in params]
    if len(set(ids)) != len(ids) or set(ids) != {id(p) for p in module.parameters()}:
        return None
    # Each layer is updated in place once its gradient is known (autograd computes every
    # gradient first): no two parameters may share storage.
    if len({p.untyped_storage().data_ptr() for p in params}) != len(params):
        return None
    for p in params:
        if (
            type(p) is not nn.Parameter
            or p.dtype != torch.float32
            or p.device.type != "cpu"
            or p.layout != torch.strided
            or not p.requires_grad
            or not p.is_contiguous()
        ):
            return None
    i = 0
    while i + 1 < len(ops):  # ReLU then 2x2 max pooling: pool first (see the module docstring)
        if ops[i].kind == "relu" and ops[i + 1].kind == "pool":
            ops[i], ops[i + 1] = ops[i + 1], ops[i]
            i += 2
        else:
            i += 1
    # What the cached chain depends on: the same layer and parameter objects, in order.
    sig = (tuple(id(layer) for layer in layers), tuple(id(p) for p in params))
    if cached is None or cached.signature != sig:
        return FusedChain(ops, params, sig, onednn, fold_update, unfold_conv)
    if (cached.onednn, cached.fold_update, cached.unfold_conv) == (
        onednn,
        fold_update,
        unfold_conv,
    ):
        return cached
    return FusedChain(ops, params, sig, onednn, fold_update, unfold_conv, _buffers=cached._buffers)
