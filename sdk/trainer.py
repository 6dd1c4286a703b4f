"""Local training with PyTorch: plain minibatch SGD from flat params on numpy data."""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from ._conv import unfold_conv, unfold_conv_preferred
from ._data import (
    IGNORE_INDEX,
    TrainingDataError,
    check_finite_inputs,
    check_labels,
    check_rng,
    check_settings,
    check_start_params,
    check_trained_params,
    diverged,
)
from ._fused import LARGE_LINEAR_WEIGHTS, FusedChain, fused_chain
from ._maxpool import fast_max_pool
from ._types import CancelFlag, LocalTrainer, TrainingCancelled, TrainResult
from .flat import _read_only_tensor, get_flat_params, set_flat_params

__all__ = [
    "TorchTrainer",
    "TrainResult",
    "LocalTrainer",
    "TrainingDataError",
    "IGNORE_INDEX",
    "check_training_data",
    "check_labels",
    "check_finite_inputs",
    "output_shape",
    "input_vocabulary",
    "evaluate",
    "check_evaluation_data",
    "evaluation_sums",
    "evaluation_result",
    "fast_max_pool",
    "onednn_linear",
    "onednn_linear_available",
    "ONEDNN_LINEAR_MIN_WEIGHTS",
    "restored_slots",
    "cast_readers",
    "float_id_reader",
    "MAX_FLOAT_VOCAB",
]

# Below this many weights a Linear layer stays on torch's default (BLAS) path: for small
# layers the kernel choice is lost in per-op overhead (bench/explore_cnn_speed.py, "linear").
# One number with the fused step's, which must pick the kernel autograd's path picks.
ONEDNN_LINEAR_MIN_WEIGHTS = LARGE_LINEAR_WEIGHTS


# The largest count `torch.set_num_threads` takes (a C int): a larger one, refused by
# `_check_threads`, would fail only inside `train` (torch's "Overflow when unpacking long").
_MAX_THREADS = 2**31 - 1


def _check_threads(threads: object) -> int | None:
    """`TorchTrainer`'s `threads` as an int, or None; `ValueError` unless None or an integer
    from 1 to `_MAX_THREADS` (a bool is no thread count, nor a float such as 2.0)."""
    if threads is None:
        return None
    if isinstance(threads, numbers.Integral) and not isinstance(threads, bool):
        n = int(threads)
        if 1 <= n <= _MAX_THREADS:
            return n
    raise ValueError(
        f"threads must be an integer from 1 to {_MAX_THREADS} or None, got {threads!r}"
    )


def _check_sgd_setting(name: str, value: object) -> float:
    """`TorchTrainer`'s `momentum` or `weight_decay` as a float: a finite number >= 0, the
    range torch.optim.SGD takes (it refuses a negative one, only when the optimizer is
    made, and takes NaN and inf); `ValueError` else (a bool too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _parallel_backend() -> str:
    """torch's intra-op parallel backend as `torch.__config__.parallel_info()` names it
    ("OpenMP", "native thread pool", ...)."""
    for line in torch.__config__.parallel_info().splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "ATen parallel backend":
            return value.strip()
    return "unknown"


_ONCE_AT_START = "call torch.set_num_threads(n) once at start and leave threads=None"


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch's thread count at `threads` (None: as it is), then put the
    previous count back, also when the block raises.

    With torch's OpenMP backend the count is the calling thread's once it has run torch work
    (another thread's block does not change it), and a thread that first runs torch work
    during the block takes `threads`. Torch's native backend keeps one count per process and
    ignores (with a warning) a change once parallel work has started or a count was set: a
    `threads` it does not take is a `RuntimeError` before the block runs; a previous count it
    does not take back after the block is a `RuntimeWarning` (the block's result or error
    stands, and `threads` stays set)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    now = torch.get_num_threads()
    if now != threads:
        if now != before:
            torch.set_num_threads(before)
        raise RuntimeError(
            f"threads={threads}: torch kept {now} threads, not {threads}: its parallel backend "
            f"({_parallel_backend()}) did not take the change (torch's native backend ignores "
            f"one once parallel work has started or a count was set); {_ONCE_AT_START}"
        )
    try:
        yield
    finally:
        torch.set_num_threads(before)
        now = torch.get_num_threads()
        if now != before:
            # Not raised: it would hide the training's result (or its own error).
            warnings.warn(
                f"threads={threads}: torch's thread count stays at {now} after training, not "
                f"the {before} from before: its parallel backend ({_parallel_backend()}) did "
                f"not take the change back; {_ONCE_AT_START}",
                RuntimeWarning,
                stacklevel=4,  # this generator, contextlib's __exit__, train: train's caller
            )


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


@contextlib.contextmanager
def restored_slots(module: nn.Module) -> Iterator[None]:
    """Put every tensor slot of `module` back as it was when the block exits (raised included):
    each submodule's `_parameters` and `_buffers` entries and its tensor attributes.

    `torch.func.functional_call` swaps the given tensors into the module's slots and back, but
    a slot reachable under two names (a layer registered twice, a tied weight) is swapped twice
    and "restored" to the traced tensor: after tracing or vmapping, the caller's model held
    FakeTensors or dead functorch tensors (pytorch/pytorch#164759). Tracing a deep copy instead
    broke models a copy cannot stand in for (a lambda or hook closing over `self`, a
    `__deepcopy__` that unties a weight, a lock). Slots are kept per module object, so a module
    reached by several paths is restored once, and every module holding a tied tensor is. A
    tensor attribute (torch's hook-based weight norm sets `weight` in each forward) is put back
    too. Used by `sdk.onnx_export` and mobile_sim's vectorized backend (torch's side of the
    SDK: `sdk.ort` imports no torch).
    """
    saved = [
        (
            m,
            dict(m._parameters),
            dict(m._buffers),
            {k: v for k, v in vars(m).items() if isinstance(v, torch.Tensor)},
        )
        for m in module.modules()
    ]
    try:
        yield
    finally:
        for m, params, buffers, attrs in saved:
            m._parameters.update(params)
            m._buffers.update(buffers)
            vars(m).update(attrs)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _forward_reading(module: nn.Module, xt: torch.Tensor) -> tuple[Any, int | None]:
    """One forward pass of `module` on `xt` (eval mode, `no_grad`; the mode is restored):
    (its output, the vocabulary bounding `xt`'s values, or None). The vocabulary is the fewest
    rows among the `nn.Embedding` layers that read `xt` itself (or a view of it, as `x.long()`
    of int64 ids is): a position table read from `torch.arange` does not bound token ids."""
    ptr = xt.untyped_storage().data_ptr()
    rows: list[int] = []

    def hook(layer: nn.Module, args: tuple[Any, ...]) -> None:
        read = args[0] if args else None
        same = isinstance(read, torch.Tensor) and read.untyped_storage().data_ptr() == ptr
        if same and isinstance(layer, nn.Embedding):
            rows.append(layer.num_embeddings)

    integer = not (xt.dtype.is_floating_point or xt.dtype.is_complex)
    handles = [
        m.register_forward_pre_hook(hook)
        for m in module.modules()
        if integer and isinstance(m, nn.Embedding)
    ]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(xt)
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return out, min(rows, default=None)


# float32 holds every whole number only up to 2^24: float ids past it would be rounded.
MAX_FLOAT_VOCAB = 1 << 24


def cast_readers(module: nn.Module, inputs: list[torch.Tensor], want: int) -> list[dict[str, int]]:
    """For each of `inputs` in turn whose forward pass runs, until `want` have: the
    {path: rows} of the `nn.Embedding` layers whose read is that input cast to integers (as
    ``x.long()`` gives it). Each embedding reads its input clamped to its rows, so a probe
    never reaches one with an id it lacks; a forward pass that raises reads nothing and is
    skipped. Eval mode, no grad, the RNG state and mode restored; [] without embeddings (no
    pass run)."""
    found: list[dict[str, int]] = []

    def reader(path: str) -> Callable[[nn.Module, tuple[Any, ...]], Any]:
        def hook(layer: nn.Module, args: tuple[Any, ...]) -> Any:
            read = args[0] if args else None
            if not (isinstance(layer, nn.Embedding) and isinstance(read, torch.Tensor)):
                return None
            if read.dtype.is_floating_point or read.dtype.is_complex:
                return None
            n = layer.num_embeddings
            if read.shape == probe.shape and torch.equal(read, probe.to(read.dtype)):
                found[-1][path] = n
            return (read.clamp(0, n - 1), *args[1:])

        return hook

    handles = [
        m.register_forward_pre_hook(reader(path or "<root>"))
        for path, m in module.named_modules()
        if isinstance(m, nn.Embedding)
    ]
    if not handles:
        return found
    was_training = module.training
    try:
        with torch.random.fork_rng(), torch.no_grad():
            module.eval()
            for probe in inputs:
                found.append({})
                try:
                    module(probe)
                except Exception:  # a forward pass that refuses a probe reads nothing of it
                    found.pop()
                if len(found) == want:
                    break
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return found


def float_id_reader(
    module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype
) -> tuple[int, str] | None:
    """For float inputs of per-example `shape`: (rows, path) of the `nn.Embedding` that reads
    them as token ids through a cast (``x.long()``, as mobile_sim's text models do; the fewest
    rows if several do), or None when none does.

    An embedding is taken to read token ids when what it reads is the cast of the input, of
    the input's shape, on two probe inputs: zeros (id 0 is in every vocabulary) and negative
    whole numbers. The second rules out transforms that agree with the cast on some inputs
    only: a flag ``(x > 0.5).long()`` equals ``x.long()`` on 0/1 inputs, a clamp on ids in
    range. A forward pass that refuses one of them (an RNN packing sequences by their count of
    non-zero ids fails on zeros, ``F.one_hot`` on negative ids) is replaced by positive whole
    numbers (1, 2, 3, ..., which a flag does not read as its cast either). The probes never
    reach an embedding with an id it lacks (each embedding reads its input clamped to its
    rows), and nothing about the caller's data is assumed: whether given float values are ids
    or features (a model bucketing features with ``x.long()`` reads the same way) is the
    caller's call (`sdk.onnx_export` and `TorchTrainer` decide from whole numbers). Two or
    three forward passes of a batch of 2 (eval mode, no grad, the RNG state and mode
    restored); None if fewer than two of them run.
    """
    count = 2 * math.prod(shape)
    probes = [
        torch.zeros((2, *shape), dtype=dtype),
        (-1 - torch.arange(count) % 5).to(dtype).reshape(2, *shape),
        (1 + torch.arange(count) % 3).to(dtype).reshape(2, *shape),  # if one of those fails
    ]
    found = cast_readers(module, probes, want=2)
    if len(found) < 2:
        return None
    both = {path: n for path, n in found[0].items() if found[1].get(path) == n}
    if not both:
        return None
    path = min(both, key=lambda k: both[k])
    return both[path], path


def input_vocabulary(module: nn.Module, x: torch.Tensor) -> int | None:
    """How many token ids `module` takes in integer input `x` (a batch): the rows of the
    `nn.Embedding` that reads `x` (the fewest, if several do); None for float inputs or when no
    embedding reads `x` itself (ids transformed first are not bounded here). One forward pass."""
    return _forward_reading(module, x)[1]


def _dtype_hint(module: nn.Module, x: npt.NDArray[Any]) -> str:
    """For floating-point inputs of another dtype than `module`'s parameters (float64, as
    sklearn and pandas give them): the cast that fits them, to end a misfit's message; else
    ''. Torch's own words (`mat1 and mat2 must have the same dtype, but got Double and
    Float`) do not say which side to change."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if x.dtype.kind != "f" or dtype is None:
        return ""
    want = torch.empty(0, dtype=dtype).numpy().dtype
    if x.dtype == want:
        return ""
    return f"; the model's parameters are {want}: pass x.astype(np.{want})"


def _integer_hint(module: nn.Module, first: npt.NDArray[Any]) -> str:
    """For integer or bool inputs (raw `uint8` pixels) that `module` takes once cast to its
    parameters' float dtype (one more forward pass, on the first example): the fix, to end a
    misfit's message, in the words `sdk.ort` uses; else '' (token ids a float cast does not
    fit either, or a misfit the cast does not cure). Torch's own words (`mat1 and mat2 must
    have the same dtype, but got Byte and Float`) do not say which side to change."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if first.dtype.kind not in "iub" or dtype is None:
        return ""
    want = torch.empty(0, dtype=dtype).numpy().dtype
    try:
        _forward_reading(module, torch.from_numpy(first.astype(want)))
    except Exception:
        return ""
    return (
        f"; it takes {want} inputs: scale and cast integer data to floats first "
        f"(for 8-bit pixels, x.astype(np.{want}) / 255)"
    )


def _probe(
    module: nn.Module, x: npt.NDArray[Any], where: str
) -> tuple[tuple[int, ...], int | None]:
    """(`output_shape`, the vocabulary bounding integer inputs (`input_vocabulary`) or None)."""
    if x.ndim == 0 or len(x) == 0:
        raise TrainingDataError(f"{where} of shape {list(x.shape)}: no example to run the model on")
    first = np.ascontiguousarray(x[:1])
    try:
        out, vocab = _forward_reading(module, _read_only_tensor(first))
    except Exception as exc:  # whatever the forward pass raises, the input does not fit it
        misfit = TrainingDataError(
            f"{where} of shape {list(x.shape)} ({x.dtype}) does not fit the model: "
            f"{_first_line(exc)}{_dtype_hint(module, x) or _integer_hint(module, first)}"
        )
        if x.dtype.kind not in "iu":
            raise misfit from exc
        # Token ids: if zeros (a row of every embedding) pass and the first example holds an
        # id past the vocabulary found, that id is the misfit: `_checked`'s range check
        # refuses it in its words.
        try:
            out, vocab = _forward_reading(module, torch.from_numpy(np.zeros_like(first)))
        except Exception:
            raise misfit from exc
        if vocab is None or first.max() < vocab:
            raise misfit from exc
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the model's output for one example is {got}: cross-entropy training needs "
            "logits [B, C] (or [B, C, ...])"
        )
    return tuple(out.shape[1:]), vocab


def output_shape(module: nn.Module, x: npt.NDArray[Any], *, where: str = "x") -> tuple[int, ...]:
    """The shape of `module`'s output for one example (`x[:1]`), without its batch dimension.

    One forward pass in eval mode under `no_grad` (no dropout draw, no batch-norm statistics
    update; the module's mode is restored). If the forward pass refuses the input (a wrong
    shape or dtype), raises `TrainingDataError` with the first line of torch's reason.
    """
    return _probe(module, x, where)[0]


def _id(value: object) -> object:
    """A token id as the message shows it: a whole float as the integer it stands for."""
    if isinstance(value, float | np.floating) and float(value) == np.floor(value):
        return int(value)
    return value


def _float_ids(x: npt.NDArray[Any]) -> bool:
    """Whether float inputs `x` (finite) are token ids for a model that reads them through a
    cast: at least half of the examples hold whole numbers only. A token sequence is whole
    numbers, so one bad id does not make the data features; continuous features (a model
    bucketing them with ``x.long()``) are almost never whole in a whole example."""
    if not len(x):
        return False
    whole = (x == np.floor(x)).reshape(len(x), -1).all(axis=1)
    return 2 * int(np.count_nonzero(whole)) >= len(x)


def _check_token_ids(x: npt.NDArray[Any], vocab: int | None) -> None:
    """Raise `TrainingDataError` if integer inputs `x` hold an id outside [0, vocab) (`vocab`
    None: only negative ids), or float inputs read through a cast by an embedding of `vocab`
    rows (`float_id_reader`) a value torch cannot run (not finite, or truncating outside
    [0, vocab)), or a fraction when they are token ids by `_float_ids`. Both trainers, with
    the same words."""
    if not x.size:
        return
    read = x
    if x.dtype.kind == "f":
        if vocab is None:
            return
        if not bool(np.isfinite(x).all()) or (_float_ids(x) and bool((x != np.floor(x)).any())):
            raise TrainingDataError("token ids must be whole numbers")
        read = np.trunc(x)  # what ``x.long()`` reads; features (fractions) are truncated
    elif x.dtype.kind not in "iu":
        return
    low, high = int(np.argmin(read)), int(np.argmax(read))
    if read.flat[low] < 0:
        raise TrainingDataError(f"token ids must be >= 0, got {_id(x.flat[low])}")
    if vocab is not None and read.flat[high] >= vocab:
        count = int(np.count_nonzero(read >= vocab))
        raise TrainingDataError(
            f"token ids must be below {vocab}, the model's vocabulary (the rows of the "
            f"embedding reading them), got {_id(x.flat[high])} ({count} of {x.size} ids past it)"
        )


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    """The torch dtype of numpy `dtype`, read from an empty array of it: not from the data,
    which torch may not wrap (negative strides: a flipped view; a read-only array warns)."""
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _probe_ids(
    module: nn.Module, x: npt.NDArray[Any], where: str
) -> tuple[tuple[int, ...], int | None]:
    """`_probe`, and `x` checked against the vocabulary of its token ids (`_check_token_ids`):
    torch's embedding raised IndexError at the batch holding a bad one, mid-run. Float ids
    (read through ``x.long()``) are found from probe inputs (`float_id_reader`), not from
    ``x[:1]``, and checked before the probe's forward pass on ``x[:1]`` could fail on one."""
    if x.dtype.kind == "f" and x.ndim >= 1 and len(x):
        found = float_id_reader(module, tuple(x.shape[1:]), _torch_dtype(x.dtype))
        vocab = found[0] if found is not None else None
        _check_token_ids(x, vocab)
        return _probe(module, x, where)[0], vocab
    probed = _probe(module, x, where)
    _check_token_ids(x, probed[1])
    return probed


def _check_examples(
    x: npt.NDArray[Any], y: npt.NDArray[Any], where: str
) -> npt.NDArray[np.integer[Any]]:
    """Checks that need no model: at least one example, one label per example, integer
    labels, finite inputs. Returns y (as given)."""
    if x.ndim == 0 or len(x) == 0:
        raise TrainingDataError(f"{where}: a device needs at least one example to train")
    if y.ndim == 0 or len(y) != len(x):
        raise TrainingDataError(
            f"{where}: x has {len(x)} examples but y has "
            f"{'a scalar' if y.ndim == 0 else f'{len(y)} labels'} (shapes {list(x.shape)} "
            f"and {list(y.shape)}): one label per example"
        )
    if y.dtype.kind not in "iu":
        raise TrainingDataError(f"{where}: y must hold integer class labels, got {y.dtype}")
    check_finite_inputs(x, where=where)
    # Token ids: torch's embedding raised an IndexError mid-training, at the batch holding a
    # negative one; refused up front with the words of `sdk.ort.OrtTrainer` (ids past the
    # vocabulary are refused once the probe found it, in `_checked`).
    _check_token_ids(x, None)
    return y


def _check_against_output(
    y: npt.NDArray[np.integer[Any]], out: tuple[int, ...], allow_ignore: bool, where: str
) -> npt.NDArray[np.int64]:
    """Labels against the model's per-example output shape [C, ...]; y as int64."""
    # cross-entropy reads logits [B, C, d1, ...] against targets [B, d1, ...].
    if tuple(y.shape[1:]) != out[1:]:
        raise TrainingDataError(
            f"{where}: labels of shape {list(y.shape)} do not fit the model's output "
            f"[B, {', '.join(map(str, out))}]: cross-entropy takes one class index per "
            f"prediction, shape [B{''.join(f', {k}' for k in out[1:])}]"
        )
    check_labels(y, out[0], allow_ignore=allow_ignore, where=where)
    if allow_ignore and y.size and bool((y == IGNORE_INDEX).all()):
        # Trained, it would upload a zero update weighted by its examples, pulling the round's
        # average towards the old model; its mean loss would be NaN.
        raise TrainingDataError(
            f"{where}: every label is {IGNORE_INDEX} (skipped): no example to train on"
        )
    # torch's cross-entropy takes int64 (or uint8) targets: widen the others, values unchanged.
    return y.astype(np.int64, copy=False)  # the same array when it already is int64


def check_training_data(
    module: nn.Module,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    *,
    allow_ignore: bool = False,
    where: str = "training data",
) -> int:
    """Raise `TrainingDataError` unless `module` can train on (x, y) with cross-entropy;
    returns the model's number of classes.

    Checks, once over the data (no per-batch cost): at least one example, one label per
    example, integer labels in [0, C) (`IGNORE_INDEX` too with `allow_ignore`), no NaN or inf
    in floating-point inputs, and an input the model's forward pass accepts (one forward pass
    on one example, see `output_shape`).
    """
    _, out = _checked(module, x, y, allow_ignore, where, {})
    return out[0]


def _checked(
    module: nn.Module,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    allow_ignore: bool,
    where: str,
    out_shapes: dict[tuple[tuple[int, ...], str], tuple[tuple[int, ...], int | None]],
) -> tuple[npt.NDArray[np.int64], tuple[int, ...]]:
    """`check_training_data`'s checks: (y as int64, the model's per-example output shape).
    `out_shapes` caches the output shape and the vocabulary of integer inputs per (example
    shape, dtype), so the probe runs once."""
    try:
        x, y = np.asarray(x), np.asarray(y)
    except ValueError as exc:  # a ragged list
        raise TrainingDataError(f"{where}: x or y is not an array: {_first_line(exc)}") from None
    labels = _check_examples(x, y, where)
    key = (tuple(x.shape[1:]), x.dtype.str)
    probed = out_shapes.get(key)
    if probed is None:
        probed = out_shapes[key] = _probe_ids(module, x, f"{where}: x")
    else:
        _check_token_ids(x, probed[1])  # torch's embedding raised IndexError at the batch
    out = probed[0]
    return _check_against_output(labels, out, allow_ignore, where), out


def _counted_targets(y: npt.NDArray[Any]) -> npt.NDArray[np.int64] | None:
    """The targets each example counts in the cross-entropy mean (those not `IGNORE_INDEX`),
    or None when none is skipped (every example counts the same)."""
    skipped = y == IGNORE_INDEX
    if not bool(skipped.any()):
        return None
    counted: npt.NDArray[np.int64] = (~skipped).reshape(len(y), -1).sum(axis=1, dtype=np.int64)
    return counted


class TorchTrainer:
    """Runs E epochs of minibatch SGD (optionally with momentum) with cross-entropy loss.

    The module is reused between calls (its weights are overwritten from `params` each time),
    so one trainer serves many simulated devices without reallocating the model. After a call
    it holds the weights that call trained (this device's local model, not the task's global
    one: `sdk.Client.participate` with `TorchTrainer(model)` leaves the app's `model` so), and
    every submodule is back in the mode it was in (training runs in train mode: an app's
    model in eval mode stays in eval mode), also when the call raises.

    `module` must be a `torch.nn.Module` (anything else is a `TypeError` here).
    `momentum` and `weight_decay` (torch.optim.SGD's) must be finite numbers >= 0: anything
    else is a `ValueError` here, not at the first `train` (a device then failed after it was
    selected for a round).

    `fast_linear` (default on) runs large `nn.Linear` layers through oneDNN while training
    (`onednn_linear`): the same SGD, about 1.1-1.2x faster per step for the MNIST CNN on an
    AMD EPYC. The result differs from the BLAS path only by float rounding.
    `fast_pool` (default on) runs `nn.MaxPool2d(2)` layers through `fast_max_pool`: bit-identical
    values and gradients, 3-5% faster for an MNIST-CNN client's local training.
    `fused` (default on) trains without autograd where it can (`sdk._fused`): when the module
    is a chain of `nn.Conv2d`, `nn.ReLU`, `nn.MaxPool2d(2)`, `nn.Flatten()` and `nn.Linear`
    layers (an exact `nn.Sequential`, or a module that declares its chain with a method
    `fused_layers(self) -> Sequence[nn.Module]` returning the layers its forward applies, in
    order: the author promises forward is exactly that chain, nothing is traced or checked
    against it; see `sdk._fused` and `sdk._fused.fused_chain` for every condition), the optimizer is plain SGD (momentum and
    weight decay 0), `loss_fn` is the default `nn.CrossEntropyLoss()`, and the inputs are float32
    whose shapes the chain handles, ending in logits [B, C]. Each step then calls the kernels
    autograd would, in autograd's order, and updates each parameter in place: the same
    arithmetic (an MNIST-CNN client's local training came out bit-identical to the autograd
    path's on the machine measured). Anything else trains through autograd.
    `fold_update` (default off; only with `fused`) also updates large Linear layers' weights
    inside their weight-gradient product: a faster step, but float rounding then differs from
    the autograd path's (about 1e-7 relative on the MNIST CNN's trained parameters, well inside
    the simulator backends' agreement tolerance), so results no longer reproduce bit for bit.
    `unfold_conv` (default None: on where torch's CPU kernels dispatch to AVX2, off elsewhere;
    True or False forces it) computes one-input-channel `nn.Conv2d` layers' weight and bias
    gradients as unfold (im2col) and one batched matmul instead of oneDNN's
    `convolution_backward`, on both paths alike (`sdk._conv`): on an AVX2-only AMD EPYC that
    kernel is 2.2x faster for the MNIST CNN's first layer, 5-6% of a training step, and closer
    to float64; on the AVX-512 machines measured oneDNN's was already fast. Float rounding only.
    Whether a call qualifies is checked on every call (a parameter frozen or a layer
    reconfigured between calls trains through autograd). The fast path leaves the parameters'
    `.grad` at None. Its speed against the autograd path: `python
    bench/explore_cnn_speed.py --only fused`.

    `train` checks its data once per call, before the first step (`TrainingDataError`, a
    `ValueError`): see `check_training_data`. Labels may also be `IGNORE_INDEX` (-100), skipped
    as torch's cross-entropy skips it. The forward pass that finds the model's output shape
    runs once per input shape and dtype and is cached, so a call costs O(data) numpy work.

    `threads` (default None: torch's setting is left as it is; else an integer from 1 to
    2**31 - 1) runs each `train` call with `torch.set_num_threads(threads)` and puts the
    previous count back when the call returns or raises (cancelled included): an app on a
    phone keeps local training to that many CPU threads. With torch's OpenMP backend
    (`torch.__config__.parallel_info()` says `ATen parallel backend: OpenMP`; Linux and
    Windows wheels) the count is kept per OS thread once that thread has run torch work, so
    this sets and restores the calling thread's: two trainers training at once in two threads
    each train on their own `threads`, and a thread that first runs torch work during a call
    takes `threads`. Torch's native backend (a build without OpenMP) keeps one count per
    process and ignores a change once parallel work has started or a count was set: a
    `threads` it does not take is a `RuntimeError` before any training, and a count it does
    not take back afterwards a `RuntimeWarning` (the training stands, `threads` stays set);
    there, call `torch.set_num_threads(n)` once at start and leave `threads` at None. Another
    count may change float rounding (torch's kernels split their work by thread); with
    `threads` equal to the current count, the result is the same bits as with None.

    A trainer is not thread-safe: it keeps per-call state (the module's weights, the fused
    step's buffers), so use one trainer (and one module) per thread.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        fast_linear: bool = True,
        fast_pool: bool = True,
        fused: bool = True,
        fold_update: bool = False,
        unfold_conv: bool | None = None,
        threads: int | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            # Accepted before, so the first `train` failed on an attribute deep in torch,
            # after the device was selected and had downloaded the round's model.
            raise TypeError(f"module must be a torch.nn.Module, not {type(module).__name__}")
        self.threads = _check_threads(threads)
        self.module = module
        # Checked here, not by torch.optim.SGD at the first `train`: a device then failed
        # after it was selected and had downloaded the round's model, and a NaN or inf
        # momentum trained until the loss was NaN, blamed on the lr.
        self.momentum = _check_sgd_setting("momentum", momentum)
        self.weight_decay = _check_sgd_setting("weight_decay", weight_decay)
        self.fast_linear = fast_linear
        self.fast_pool = fast_pool
        self.fused = fused
        self.fold_update = fold_update
        self.unfold_conv = unfold_conv
        self.loss_fn = nn.CrossEntropyLoss()
        self._chain: FusedChain | None = None
        # (per-example input shape, dtype) -> (per-example output shape, the vocabulary
        # bounding integer inputs or None), from `_probe`.
        self._out_shapes: dict[tuple[tuple[int, ...], str], tuple[tuple[int, ...], int | None]]
        self._out_shapes = {}

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
        cancel: CancelFlag | None = None,
    ) -> TrainResult:
        """E epochs of SGD from flat `params` (float32[d]) on x (float32[N, ...]) and class
        labels y (int[N], or int[N, ...] for a model with logits [B, C, ...]).

        Each epoch draws ``rng.permutation(N)`` and walks it in batches of `batch_size`, the
        last one partial. Returns the trained params, the number of examples that have a
        target (N, less those whose labels are all `IGNORE_INDEX`: the update's FedAvg weight)
        and the mean loss over every step, each step's loss weighted by the targets it counts
        (labels `IGNORE_INDEX` count none); NaN for `epochs` 0 (no step, no loss).
        Raises `TrainingDataError` for data the model cannot train on (token ids included:
        below the rows of the `nn.Embedding` reading them, see `input_vocabulary`) and
        `ValueError` for epochs < 0, batch_size < 1, an lr that is not finite and >= 0, `params`
        holding NaN or inf, or a run whose loss becomes NaN or inf (diverged); `TypeError` for
        an `rng` that is not a `numpy.random.Generator`. `params` is only read (a read-only
        array is fine), and so are x and y (a read-only or memory-mapped x, or a flipped view
        with negative strides, trains as a copy would).
        `cancel` (a `threading.Event`, say) is read before each step: once set, `train` raises
        `TrainingCancelled` without a result, within one step (the module holds the partly
        trained weights, which the next call overwrites).
        Runs on `self.threads` torch threads when set (see the class).
        """
        # Each submodule's mode as it was (an app's model in eval mode serves predictions
        # without dropout): put back when the call returns or raises.
        modes = [(m, m.training) for m in self.module.modules()]
        try:
            with _torch_threads(self.threads):
                return self._train(
                    params, x, y, epochs=epochs, batch_size=batch_size, lr=lr, rng=rng,
                    cancel=cancel,
                )  # fmt: skip
        finally:
            for m, training in modes:
                m.training = training

    def _train(
        self,
        params: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
        cancel: CancelFlag | None,
    ) -> TrainResult:
        """`train`, on the thread count the caller set."""
        check_settings(epochs, batch_size, lr)
        check_rng(rng)
        y = self.check_data(x, y)
        check_start_params(params)
        per_example = _counted_targets(y)
        set_flat_params(self.module, params)
        self.module.train()
        opt = torch.optim.SGD(
            self.module.parameters(), lr=lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        # Only read (batches are gathered copies): a read-only x (np.load(mmap_mode="r")) is
        # taken as it is, without torch's warning about writes.
        xt = _read_only_tensor(np.ascontiguousarray(x))
        yt = _read_only_tensor(np.ascontiguousarray(y))
        chain = self._fused_chain(xt, yt)
        if chain is not None:
            return self._train_fused(
                chain, xt, yt, per_example, epochs, batch_size, lr, rng, cancel
            )
        n = len(x)
        total, count, steps = 0.0, 0, 0
        linear = onednn_linear(self.module) if self.fast_linear else contextlib.nullcontext(0)
        pool = fast_max_pool(self.module) if self.fast_pool else contextlib.nullcontext(0)
        conv = unfold_conv(self.module) if self._unfold_conv() else contextlib.nullcontext(0)
        with linear, pool, conv:
            for epoch in range(epochs):
                perm = rng.permutation(n)
                order = torch.from_numpy(perm)
                for start in range(0, n, batch_size):
                    if cancel is not None and cancel.is_set():
                        raise TrainingCancelled(steps)
                    idx = order[start : start + batch_size]
                    opt.zero_grad(set_to_none=True)
                    loss = self.loss_fn(self.module(xt.index_select(0, idx)), yt[idx])
                    value = float(loss.detach())
                    steps += 1
                    # A batch whose labels are all skipped has a NaN loss (a mean over no
                    # target) and a zero gradient: it counts nothing.
                    weight = (
                        len(idx)
                        if per_example is None
                        else int(per_example[perm[start : start + batch_size]].sum())
                    )
                    if weight and not math.isfinite(value):
                        raise diverged(value, steps, epoch + 1, lr)
                    loss.backward()
                    opt.step()
                    if weight:
                        total += value * weight
                        count += weight
        flat = get_flat_params(self.module)
        check_trained_params(flat, steps, lr)
        # The FedAvg weight: the examples that have a target (an example whose labels are all
        # skipped adds nothing to the update). No step (epochs 0): no loss, NaN.
        weight = n if per_example is None else int(np.count_nonzero(per_example))
        return TrainResult(flat, weight, total / count if count else math.nan)

    def _unfold_conv(self) -> bool:
        """Whether this call's one-input-channel convolutions take their weight gradients from
        `sdk._conv` (`unfold_conv`; None: where that was measured faster)."""
        if self.unfold_conv is None:
            return unfold_conv_preferred()
        return bool(self.unfold_conv)

    def _fused_chain(self, xt: torch.Tensor, yt: torch.Tensor) -> FusedChain | None:
        """The autograd-free step for this call, or None (train through autograd)."""
        loss = self.loss_fn
        if (
            not self.fused
            or self.momentum != 0
            or self.weight_decay != 0
            or type(loss) is not nn.CrossEntropyLoss
            or loss.weight is not None
            or loss.ignore_index != IGNORE_INDEX
            or loss.reduction != "mean"
            or loss.label_smoothing != 0.0
            or loss._forward_hooks
            or loss._forward_pre_hooks
            or loss._backward_hooks
            or loss._backward_pre_hooks
            or xt.dtype != torch.float32
            or yt.dim() != 1
        ):
            return None
        onednn = self.fast_linear and onednn_linear_available()
        self._chain = chain = fused_chain(
            self.module, onednn, self._chain, self.fold_update, self._unfold_conv()
        )
        if chain is None or not chain.fits(tuple(xt.shape[1:])):
            return None
        return chain

    def _train_fused(
        self,
        chain: FusedChain,
        xt: torch.Tensor,
        yt: torch.Tensor,
        per_example: npt.NDArray[np.int64] | None,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
        cancel: CancelFlag | None,
    ) -> TrainResult:
        """`train`'s loop on the fused step: the same batches, checks and result."""
        for p in chain.params:
            p.grad = None
        n = len(xt)
        total, count, steps = 0.0, 0, 0
        try:
            with torch.no_grad():
                for epoch in range(epochs):
                    perm = rng.permutation(n)
                    order = torch.from_numpy(perm)
                    # One gather per epoch; each batch is then a contiguous slice of it.
                    xe, ye = xt.index_select(0, order), yt.index_select(0, order)
                    for start in range(0, n, batch_size):
                        if cancel is not None and cancel.is_set():
                            raise TrainingCancelled(steps)
                        stop = start + batch_size
                        value = chain.forward_loss(xe[start:stop], ye[start:stop])
                        steps += 1
                        weight = (
                            len(perm[start:stop])
                            if per_example is None
                            else int(per_example[perm[start:stop]].sum())
                        )
                        if weight and not math.isfinite(value):
                            raise diverged(value, steps, epoch + 1, lr)
                        chain.backward_update(lr)
                        if weight:
                            total += value * weight
                            count += weight
        finally:  # a cancelled or diverged run keeps no batch's activations alive
            chain.release()
        flat = get_flat_params(self.module)
        check_trained_params(flat, steps, lr)
        weight = n if per_example is None else int(np.count_nonzero(per_example))
        return TrainResult(flat, weight, total / count if count else math.nan)

    def check_data(
        self, x: npt.NDArray[Any], y: npt.NDArray[Any], *, allow_ignore: bool = True
    ) -> npt.NDArray[np.int64]:
        """`check_training_data` with this trainer's cached output shapes; returns y as int64
        (the same array if it already is). Raises `TrainingDataError`."""
        return _checked(self.module, x, y, allow_ignore, "training data", self._out_shapes)[0]


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

    Both means are over every prediction: one per example for logits [B, C], one per position
    for [B, C, d1, ...] with labels [B, d1, ...]. Labels must be classes of the model's output
    (`TrainingDataError`, in `sdk.ort.OrtTrainer.evaluate`'s words): -100 is refused here too;
    one per example (len(y) == len(x)), of any integer dtype, shaped to the logits.

    The same as `check_evaluation_data`, then `evaluation_sums`, then `evaluation_result`:
    a caller that splits the rows at multiples of `batch_size` over several processes and
    joins the parts' sums in row order gets this result bit for bit (the process pool's
    evaluation, `mobile_sim.backends.ProcessPoolBackend.evaluate`).
    """
    _check_batch_size(batch_size)
    x, labels = check_evaluation_data(module, x, y)
    correct, losses = evaluation_sums(module, params, x, labels, batch_size, fast_pool)
    return evaluation_result(correct, losses, labels.size)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        # 0 failed in range(); a negative size evaluated nothing and returned (0.0, 0.0).
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def check_evaluation_data(
    module: nn.Module, x: npt.NDArray[Any], y: npt.NDArray[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
    """`evaluate`'s checks of a labelled set against `module` (one forward pass of `x[:1]`):
    (x, y as int64) if it can be evaluated, else `TrainingDataError` (ValueError for no
    examples at all)."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0 or y.size == 0:
        raise ValueError("no examples to evaluate")
    # One label per example, integer classes (any integer dtype, widened to the int64 torch's
    # cross-entropy takes): more labels than examples in whole batches divided the sums by the
    # wrong count, silently; other mismatches raised torch's errors.
    if y.ndim == 0 or len(y) != len(x):
        raise TrainingDataError(
            f"evaluation data: x has {len(x)} examples but y has "
            f"{'a scalar' if y.ndim == 0 else f'{len(y)} labels'}: one label per example"
        )
    if y.dtype.kind not in "iu":
        raise TrainingDataError(f"evaluation data: y must hold integer class labels, got {y.dtype}")
    # An input the forward pass refuses (shape, dtype, a token id past the vocabulary) is a
    # `TrainingDataError` in `train`'s words, not torch's RuntimeError or IndexError mid-way.
    out, _ = _probe_ids(module, x, "evaluation data: x")
    return x, _check_against_output(y, out, allow_ignore=False, where="evaluation data")


def evaluation_sums(
    module: nn.Module,
    params: npt.NDArray[np.float32],
    x: npt.NDArray[Any],
    y: npt.NDArray[np.int64],
    batch_size: int = 250,
    fast_pool: bool = True,
) -> tuple[int, list[float]]:
    """(correct predictions, each batch's summed cross-entropy, in row order) of `params` on
    rows (x, y) that `check_evaluation_data` passed, `batch_size` rows per forward pass.
    Rows split at multiples of `batch_size` give the same batches, so the parts' lists joined
    in order are the whole set's."""
    _check_batch_size(batch_size)
    set_flat_params(module, params)
    module.eval()
    correct, losses = 0, []
    pool = fast_max_pool(module) if fast_pool else contextlib.nullcontext(0)
    with torch.inference_mode(), pool:
        for start in range(0, len(x), batch_size):
            xb = _read_only_tensor(np.ascontiguousarray(x[start : start + batch_size]))
            yb = _read_only_tensor(np.ascontiguousarray(y[start : start + batch_size]))
            logits = module(xb)
            losses.append(float(nn.functional.cross_entropy(logits, yb, reduction="sum")))
            correct += int((logits.argmax(1) == yb).sum())
    return correct, losses


def evaluation_result(
    correct: int, losses: Sequence[float], predictions: int
) -> tuple[float, float]:
    """(accuracy, mean loss) from `evaluation_sums`' parts over `predictions` predictions
    (`y.size`): the batch sums added one by one in row order, as `evaluate` always has."""
    loss_sum = 0.0
    for value in losses:
        loss_sum += value
    return correct / predictions, loss_sum / predictions
