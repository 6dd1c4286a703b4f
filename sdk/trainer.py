"""Local training with PyTorch: plain minibatch SGD from flat params on numpy data."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ._types import LocalTrainer, TrainResult
from .flat import get_flat_params, set_flat_params

__all__ = ["TorchTrainer", "TrainResult", "LocalTrainer", "evaluate"]


class TorchTrainer:
    """Runs E epochs of minibatch SGD (optionally with momentum) with cross-entropy loss.

    The module is reused between calls (its weights are overwritten from `params` each time),
    so one trainer serves many simulated devices without reallocating the model.
    """

    def __init__(
        self, module: nn.Module, *, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        self.module = module
        self.momentum = momentum
        self.weight_decay = weight_decay
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
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(n))
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.module(xt[idx]), yt[idx])
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
    batch_size: int = 1000,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of `params` on a labelled set."""
    set_flat_params(module, params)
    module.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            yb = torch.from_numpy(np.ascontiguousarray(y[start : start + batch_size]))
            logits = module(xb)
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return correct / len(x), loss_sum / len(x)
