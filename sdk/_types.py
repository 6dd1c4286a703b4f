"""Types shared by every device trainer (torch-free, so the ONNX runtime can import them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["TrainResult", "LocalTrainer", "CancelFlag", "TrainingCancelled"]


@dataclass(frozen=True, slots=True)
class TrainResult:
    """Outcome of local training: new flat params float32[d] (a new array, never the `params`
    the trainer was given), the examples it trained on (an int, 1 to ``len(x)``: the update's
    weight in the round's average) and the mean loss."""

    params: npt.NDArray[np.float32]
    num_examples: int
    loss: float


class CancelFlag(Protocol):
    """What a trainer's `cancel` reads: `threading.Event` is one."""

    def is_set(self) -> bool: ...


class TrainingCancelled(Exception):
    """`train(..., cancel=flag)` stopped because `flag.is_set()` was true before a minibatch
    step: after `steps` steps (0: none ran), with no result (the partly trained params are
    not an update anyone should send)."""

    def __init__(self, steps: int) -> None:
        super().__init__(f"training cancelled after {steps} step{'s' if steps != 1 else ''}")
        self.steps = steps


class LocalTrainer(Protocol):
    """Anything that runs local SGD from flat params on numpy data (torch or onnxruntime)."""

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
        """`epochs` passes of minibatch SGD from flat `params` (float32[d], `ModelSpec`
        order) over (x, y), batches of `batch_size` drawn with `rng`, learning rate `lr`; the
        trained flat params, the examples that count (the update's FedAvg weight) and the
        mean loss (NaN when no step ran). `sdk.Client` calls it with the task's settings.

        `params` is read only: train a copy (``params.copy()``) and return a new array. The
        client passes a read-only view of the round's model and sends ``trained - params``,
        so a trainer that updated `params` in place and returned it sent a zero update; now a
        numpy write into it raises (numpy's "... is read-only", reported by the client as a
        `ValueError` naming this rule), and a write numpy's flag does not stop (through
        ``torch.from_numpy(params)``) is found when `train` returns: `ValueError` too, nothing
        encoded or sent. The client also checks the result before computing the update:
        `params` float32-castable of `params`' shape (float32[d], not a column (d, 1)), not
        `params` itself nor a view of it; `num_examples` an int (not a bool) from 1 to
        ``len(x)``, as it weighs the update in the round's average. Else `TypeError` or
        `ValueError` naming the trainer, nothing sent.

        A trainer may also take a keyword `cancel: CancelFlag | None = None` (`TorchTrainer`
        and `OrtTrainer` do): it then reads `cancel.is_set()` before each minibatch step and
        raises `TrainingCancelled` once it is true. `sdk.Client` passes the `cancel` event of
        `participate` to a trainer whose `train` names that keyword, and to no other: a trainer
        without it trains to the end, and the client checks the event after it returns."""
        ...
