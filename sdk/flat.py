"""Torch modules <-> flat float32 vectors, in the order of `module.named_parameters()`."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from compression import ModelSpec

__all__ = ["spec_from_module", "get_flat_params", "set_flat_params"]


def _read_only_tensor(array: npt.NDArray[Any]) -> torch.Tensor:
    """``torch.from_numpy(array)`` for an array torch only reads: a read-only one (a
    memory-mapped file, `sdk.Client`'s view of a round's model) without torch's "The given
    NumPy array is not writable" UserWarning, which is about writes made through the tensor."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        return torch.from_numpy(array)


def spec_from_module(module: nn.Module) -> ModelSpec:
    """The flat layout of a module's trainable parameters (buffers are not federated): those
    with ``requires_grad``. A frozen parameter (``requires_grad=False``) is no part of it, so
    a module with frozen layers has another layout than the same module unfrozen (a task
    created from the unfrozen model): `sdk.Client` refuses such a task's round
    (`LayoutMismatchError`, naming the frozen parameters)."""
    return ModelSpec.from_shapes(
        (name, tuple(p.shape)) for name, p in module.named_parameters() if p.requires_grad
    )


def get_flat_params(module: nn.Module) -> npt.NDArray[np.float32]:
    """A copy of the parameters as one float32[d] vector."""
    with torch.no_grad():
        parts = [p.detach().reshape(-1) for p in module.parameters() if p.requires_grad]
        return torch.cat(parts).to(torch.float32).numpy().copy()


def set_flat_params(module: nn.Module, flat: npt.NDArray[np.float32]) -> None:
    """Load a float32[d] vector into the module's parameters, in place. A vector of any other
    length is refused (ValueError, naming both counts) before any parameter is written."""
    src = _read_only_tensor(np.ascontiguousarray(flat, dtype=np.float32))  # only read
    params = [p for p in module.parameters() if p.requires_grad]
    size = sum(p.numel() for p in params)
    if src.ndim != 1 or src.numel() != size:
        raise ValueError(
            f"flat vector of shape {tuple(src.shape)} does not fit the module: it needs its "
            f"{size} parameters as float32[{size}]"
        )
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(src[offset : offset + n].view_as(p))
            offset += n
