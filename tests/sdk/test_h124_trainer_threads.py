"""`TorchTrainer(threads=N)`: training runs on at most N torch threads and the calling thread's
setting is restored afterwards (also when training raises or is cancelled); None leaves it
alone; anything but an integer from 1 to 2**31 - 1 is refused; the numbers do not change."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sdk.flat import get_flat_params
from sdk.trainer import TorchTrainer, TrainingCancelled


@pytest.fixture
def before() -> Iterator[int]:
    """This thread's torch thread count, put back whatever a test does."""
    n = torch.get_num_threads()
    yield n
    torch.set_num_threads(n)


def _other(n: int) -> int:
    """A thread count that differs from `n`."""
    return 1 if n != 1 else 2


class _Counting(nn.Module):
    """A linear classifier that notes torch's thread count at each forward pass (autograd)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 3)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        out: torch.Tensor = self.linear(x)
        return out


def _cnn() -> nn.Sequential:
    """A chain the fused step takes (Conv2d, ReLU, MaxPool2d(2), Flatten, Linear)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 5)
    )


def _data(shape: tuple[int, ...], classes: int, n: int = 24) -> tuple[Any, Any]:
    rng = np.random.default_rng(3)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def _train(trainer: TorchTrainer, x: Any, y: Any, **kw: Any) -> Any:
    params = get_flat_params(trainer.module)
    args: dict[str, Any] = {"epochs": 2, "batch_size": 5, "lr": 0.05}
    return trainer.train(params, x, y, rng=np.random.default_rng(0), **(args | kw))


def test_training_runs_on_n_threads_and_the_setting_is_restored(before: int) -> None:
    # Prepare
    n = _other(before)
    module = _Counting()
    x, y = _data((6,), 3)

    # Execute
    _train(TorchTrainer(module, threads=n), x, y)

    # Assert: every step (and the data check's probe) on n threads; the thread's count back
    assert module.seen and set(module.seen) == {n}
    assert torch.get_num_threads() == before


def test_threads_none_leaves_torchs_setting_alone(before: int) -> None:
    module = _Counting()
    x, y = _data((6,), 3)
    _train(TorchTrainer(module), x, y)
    assert set(module.seen) == {before} and torch.get_num_threads() == before
    assert TorchTrainer(module).threads is None


def test_the_fused_step_runs_on_n_threads_and_restores_them(before: int) -> None:
    # Prepare: spy on the fused loop (the chain's forward bypasses the module's)
    n = _other(before)
    trainer = TorchTrainer(_cnn(), threads=n)
    seen: list[int] = []
    fused = trainer._train_fused

    def spy(*args: Any) -> Any:
        seen.append(torch.get_num_threads())
        return fused(*args)

    trainer._train_fused = spy  # type: ignore[method-assign]
    x, y = _data((1, 8, 8), 5)

    # Execute
    _train(trainer, x, y)

    # Assert
    assert seen == [n] and torch.get_num_threads() == before


@pytest.mark.parametrize("fused", [False, True], ids=["autograd", "fused"])
def test_the_setting_is_restored_after_a_cancel(before: int, fused: bool) -> None:
    stop = threading.Event()
    stop.set()
    trainer = TorchTrainer(_cnn(), threads=_other(before), fused=fused)
    x, y = _data((1, 8, 8), 5)
    with pytest.raises(TrainingCancelled):
        _train(trainer, x, y, cancel=stop)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("fused", [False, True], ids=["autograd", "fused"])
def test_the_setting_is_restored_after_training_raises(before: int, fused: bool) -> None:
    trainer = TorchTrainer(_cnn(), threads=_other(before), fused=fused)
    x, y = _data((1, 8, 8), 5)
    with pytest.raises(ValueError):
        _train(trainer, x, y, lr=1e38)  # the loss overflows: refused as diverged
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):  # refused in the data check, inside the same scope
        _train(trainer, x[:, :, :4], y)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.5, 2.0, "2", [2]])
def test_bad_thread_counts_are_refused(bad: object) -> None:
    with pytest.raises(
        ValueError, match=r"^threads must be an integer from 1 to 2147483647 or None, got "
    ):
        TorchTrainer(nn.Linear(2, 2), threads=bad)  # type: ignore[arg-type]


def test_a_numpy_integer_is_an_integer() -> None:
    trainer = TorchTrainer(nn.Linear(2, 2), threads=np.int64(2))  # type: ignore[arg-type]
    assert trainer.threads == 2 and type(trainer.threads) is int


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_fused_result_is_bit_identical_to_threads_none(before: int, epochs: int) -> None:
    # Prepare: one start, two trainers on equal modules
    x, y = _data((1, 8, 8), 5, n=40)
    runs = []
    for threads in (None, before):
        module = _cnn()
        trainer = TorchTrainer(module, threads=threads)
        assert trainer._fused_chain(torch.from_numpy(x), torch.from_numpy(y)) is not None
        runs.append(_train(trainer, x, y, epochs=epochs))

    # Assert: the same bits, the same loss and weight
    (a, b) = runs
    assert a.params.tobytes() == b.params.tobytes()
    assert (a.num_examples, a.loss) == (b.num_examples, b.loss)
    assert torch.get_num_threads() == before
