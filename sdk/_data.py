"""Checks of a device's local training data that need no model framework (numpy only), so that
both trainers use them: `sdk.trainer.TorchTrainer` and the torch-free `sdk.ort.OrtTrainer`."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "IGNORE_INDEX",
    "TrainingDataError",
    "check_labels",
    "check_finite_inputs",
    "check_rng",
    "check_settings",
    "check_start_params",
    "check_trained_params",
    "diverged",
]

# Targets equal to this are skipped by torch's cross-entropy (its default `ignore_index`), as
# by the ONNX training graph (`sdk.ort`); the device trainers accept it, the simulator does not.
IGNORE_INDEX = -100


class TrainingDataError(ValueError):
    """Local data a trainer cannot train on, refused before the first step: class labels
    outside the model's classes, NaN or inf inputs, inputs whose shape or dtype the model's
    forward pass refuses, no examples, or x and y of different lengths.

    A `ValueError`, so callers that caught torch's `ValueError`s still catch it; before these
    checks most of these cases failed deep inside torch (an `IndexError` from cross-entropy),
    or, for NaN inputs, trained a NaN update that the encoder refused only at upload.
    """


def check_labels(
    y: npt.NDArray[np.integer[Any]], classes: int, *, allow_ignore: bool = False, where: str = "y"
) -> None:
    """Raise `TrainingDataError` unless every class label in `y` is in [0, classes).

    With `allow_ignore`, `IGNORE_INDEX` (-100) is accepted too: torch's cross-entropy skips it.
    O(len(y)) in numpy: a min and a max, and a mask only when one is out of range.
    """
    if y.size == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo >= 0 and hi < classes:
        return
    bad = (y < 0) | (y >= classes)
    if allow_ignore:
        bad &= y != IGNORE_INDEX
    count = int(np.count_nonzero(bad))
    if count:
        first = int(y[bad].flat[0])
        also = f" (or {IGNORE_INDEX}, which is skipped)" if allow_ignore else ""
        raise TrainingDataError(
            f"{where}: class label {first} out of range: the model has {classes} classes, so "
            f"labels must be in [0, {classes}){also}; labels outside it: {count} of {y.size}"
        )


def check_finite_inputs(x: npt.NDArray[Any], *, where: str = "x") -> None:
    """Raise `TrainingDataError` if floating-point inputs hold NaN or inf (one pass over x).

    Training on them makes NaN parameters, which the update encoder refuses only at upload.
    Integer inputs (token ids) cannot hold either and are not scanned.
    """
    if x.dtype.kind not in "fc" or bool(np.isfinite(x).all()):
        return
    bad = ~np.isfinite(x.reshape(len(x), -1)) if x.ndim > 1 else ~np.isfinite(x)[:, None]
    rows = np.flatnonzero(bad.any(axis=1))
    raise TrainingDataError(
        f"{where}: {int(bad.sum())} input values are NaN or infinite, in {rows.size} of "
        f"{len(x)} examples (the first is example {int(rows[0])}); training on them would make "
        "NaN parameters"
    )


# The largest learning rate float32 parameters (and an ONNX graph's float32 lr input) hold.
MAX_LR = float(np.finfo(np.float32).max)


def check_settings(epochs: int, batch_size: int, lr: float) -> None:
    """Raise `ValueError` for SGD settings that torch would misread or reject (both trainers)."""
    # bool is an int in Python: epochs=True trained one epoch, a flag passed where a count was
    # meant, silently.
    if isinstance(epochs, bool):
        raise ValueError(f"epochs must be an integer >= 0, not a bool, got {epochs!r}")
    if not (isinstance(epochs, numbers.Integral) and epochs >= 0):
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if isinstance(batch_size, bool):
        raise ValueError(f"batch_size must be an integer >= 1, not a bool, got {batch_size!r}")
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        # 0 failed in range() ("arg 3 must not be zero"); a negative size trained nothing.
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(lr, bool):
        raise ValueError(f"lr must be a finite number >= 0, not a bool, got {lr!r}")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr >= 0):
        # torch.optim.SGD refuses lr < 0 but takes NaN, and trains NaN parameters with it.
        raise ValueError(f"lr must be finite and >= 0, got {lr!r}")
    if lr > MAX_LR:
        # float32 parameters: torch raised "value cannot be converted to type float without
        # overflow" mid-step, and an ONNX graph's float32 lr input took it as inf.
        raise ValueError(f"lr must be at most {MAX_LR:g}, the largest float32, got {lr!r}")


def check_rng(rng: object) -> None:
    """Raise `TypeError` unless `rng` is a `numpy.random.Generator` (both trainers draw each
    epoch's order with ``rng.permutation``): None or a seed failed there, mid-call, with an
    AttributeError."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got "
            f"{type(rng).__name__} {rng!r}"
        )


def check_start_params(params: npt.NDArray[Any]) -> None:
    """Raise `ValueError` if the starting parameters hold NaN or inf: training from them makes
    NaN parameters, which the update encoder refuses only at upload."""
    finite = np.isfinite(params)
    if not bool(finite.all()):
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"params hold {bad.size} NaN or infinite value{'s' if bad.size != 1 else ''} "
            f"(the first at {int(bad[0])}): training from them would make NaN parameters"
        )


def diverged(value: float, step: int, epoch: int, lr: float) -> ValueError:
    """The error for a step whose loss is NaN or infinite (the parameters are past saving),
    in the same words for both trainers."""
    if step == 1:  # lr has not acted yet: the forward pass itself overflowed
        return ValueError(
            f"training diverged: the loss was {value} at step 1, before any update: the inputs "
            "or parameters overflow float32 in the model's forward pass"
        )
    return ValueError(
        f"training diverged: the loss was {value} at step {step} (epoch {epoch}); lr {lr} is "
        "too large for this model and data, or the inputs' scale is"
    )


def check_trained_params(flat: npt.NDArray[Any], steps: int, lr: float) -> None:
    """Raise `ValueError` if the trained parameters hold NaN or inf (every loss was finite, but
    the last step's update overflowed), in the same words for both trainers."""
    if not bool(np.isfinite(flat).all()):
        raise ValueError(
            f"training diverged: the parameters hold NaN or inf after step {steps}; lr {lr} "
            "is too large for this model and data, or the inputs' scale is"
        )
