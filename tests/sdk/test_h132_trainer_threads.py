"""`TorchTrainer(threads=N)` where torch does not take the count (its native parallel backend,
a build without OpenMP, ignores a change with a warning once parallel work has started or a
count was set), counts past torch's int, and the count being the calling thread's (OpenMP
backend, this machine's build).

The native backend's refusal is simulated: `torch.set_num_threads` is replaced by one that
changes nothing (or takes only its first call), as that backend's does."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sdk.flat import get_flat_params
from sdk.trainer import TorchTrainer

from .test_h124_trainer_threads import _Counting, _other

_INT_MAX = 2**31 - 1  # torch.set_num_threads takes a C int


@pytest.fixture
def before() -> Iterator[int]:
    """This thread's torch thread count, put back (by the real setter) whatever a test does."""
    real = torch.set_num_threads
    n = torch.get_num_threads()
    yield n
    real(n)


def _data(n: int = 24) -> tuple[Any, Any]:
    rng = np.random.default_rng(3)
    return rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n)


def _train(trainer: TorchTrainer, x: Any, y: Any) -> Any:
    params = get_flat_params(trainer.module)
    return trainer.train(
        params, x, y, epochs=2, batch_size=5, lr=0.05, rng=np.random.default_rng(0)
    )


def _setter(takes: Callable[[int], bool]) -> tuple[Callable[[int], None], list[int]]:
    """A `torch.set_num_threads` that passes a call on only when `takes(call index)`; the
    counts it was called with."""
    real = torch.set_num_threads
    calls: list[int] = []

    def set_num_threads(n: int) -> None:
        calls.append(n)
        if takes(len(calls) - 1):
            real(n)

    return set_num_threads, calls


def test_a_count_torch_does_not_take_is_refused_before_training(
    before: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a backend that ignores every change (parallel work has started)
    n = _other(before)
    setter, calls = _setter(lambda i: False)
    monkeypatch.setattr(torch, "set_num_threads", setter)
    module = _Counting()
    x, y = _data()

    # Execute
    with pytest.raises(RuntimeError) as info:
        _train(TorchTrainer(module, threads=n), x, y)

    # Assert: nothing trained, the message names the backend and the way out
    message = str(info.value)
    assert message.startswith(f"threads={n}: torch kept {before} threads, not {n}: ")
    assert "parallel backend (OpenMP)" in message
    assert "call torch.set_num_threads(n) once at start and leave threads=None" in message
    assert module.seen == [] and calls == [n]
    assert torch.get_num_threads() == before


def test_a_count_that_does_not_come_back_is_a_warning_not_an_error(
    before: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a backend that takes only the first change (as the native one in a fresh
    # process: it refuses any later one)
    n = _other(before)
    setter, calls = _setter(lambda i: i == 0)
    monkeypatch.setattr(torch, "set_num_threads", setter)
    module = _Counting()
    trainer = TorchTrainer(module, threads=n)
    x, y = _data()

    # Execute
    with pytest.warns(RuntimeWarning) as record:
        result = _train(trainer, x, y)

    # Assert: the training stands (on n threads), one warning that says what stays, at the
    # caller's line
    assert np.all(np.isfinite(result.params)) and set(module.seen) == {n}
    assert calls == [n, before] and torch.get_num_threads() == n
    # (only the RuntimeWarnings: pytest.warns also records a ResourceWarning for a socket
    # an earlier test left to the collector, if it is collected here)
    runtime = [r for r in record if issubclass(r.category, RuntimeWarning)]
    assert len(runtime) == 1
    assert str(runtime[0].message).startswith(
        f"threads={n}: torch's thread count stays at {n} after training, not the {before} "
        "from before: "
    )
    assert runtime[0].filename == __file__

    # Execute: the next call finds n already set: no change, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a socket an earlier test left to the collector is not this code's warning
        warnings.simplefilter("ignore", ResourceWarning)
        _train(trainer, x, y)
    assert calls == [n, before]


def test_a_refused_restore_does_not_hide_the_trainings_own_error(
    before: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = _other(before)
    setter, _ = _setter(lambda i: i == 0)
    monkeypatch.setattr(torch, "set_num_threads", setter)
    x, y = _data()
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="lr"):
        TorchTrainer(_Counting(), threads=n).train(
            get_flat_params(_Counting()), x, y, epochs=1, batch_size=5, lr=-1.0,
            rng=np.random.default_rng(0),
        )  # fmt: skip


@pytest.mark.parametrize("bad", [_INT_MAX + 1, 2**63, 10**30, np.uint64(2**63)])
def test_counts_past_torchs_int_are_refused_at_construction(bad: object) -> None:
    with pytest.raises(
        ValueError, match=rf"^threads must be an integer from 1 to {_INT_MAX} or None, got "
    ):
        TorchTrainer(nn.Linear(2, 2), threads=bad)  # type: ignore[arg-type]


def test_the_largest_count_torch_takes_is_accepted() -> None:
    # Not trained with: torch would ask OpenMP for that many threads
    assert TorchTrainer(nn.Linear(2, 2), threads=_INT_MAX).threads == _INT_MAX


def test_two_trainers_in_two_threads_each_train_on_their_own_count(before: int) -> None:
    # Prepare: both in training at once (each waits for the other in its first forward pass)
    x, y = _data(40)
    both = threading.Barrier(2, timeout=10)
    modules: dict[int, _Counting] = {}
    errors: list[BaseException] = []

    class _Meeting(_Counting):
        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            if not self.seen:
                both.wait()
            return super().forward(inp)

    def run(n: int) -> None:
        try:
            modules[n] = _Meeting()
            _train(TorchTrainer(modules[n], threads=n), x, y)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,)) for n in (1, 3)]

    # Execute
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    # Assert: each trainer saw only its own count; this thread's is untouched
    assert errors == []
    assert {n: set(m.seen) for n, m in modules.items()} == {1: {1}, 3: {3}}
    assert torch.get_num_threads() == before


def test_a_thread_first_doing_torch_work_during_a_call_takes_its_count(before: int) -> None:
    # Prepare: a thread started now that runs torch work only during the training
    n = _other(before)
    go, done = threading.Event(), threading.Event()
    seen: list[int] = []

    def late() -> None:
        go.wait(10)
        seen.append(torch.get_num_threads())
        done.set()

    worker = threading.Thread(target=late)
    worker.start()

    class _Starting(_Counting):
        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            if not go.is_set():
                go.set()
                done.wait(10)
            return super().forward(inp)

    x, y = _data()

    # Execute
    _train(TorchTrainer(_Starting(), threads=n), x, y)
    worker.join()

    # Assert
    assert seen == [n] and torch.get_num_threads() == before
