"""The process pool evaluates each round's model in its workers: each a share of the test rows,
batched as `sdk.trainer.evaluate` batches them, the shares' sums joined in row order."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sdk.trainer
from mobile_sim import runner
from mobile_sim.backends import SequentialBackend, TrainContext
from mobile_sim.backends.process_pool import (
    EVAL_BATCH,
    PoolWorkerError,
    ProcessPoolBackend,
    eval_chunks,
)
from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from sdk.flat import get_flat_params
from sdk.trainer import (
    TrainingDataError,
    evaluate,
    evaluation_result,
    evaluation_sums,
)


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 5000), workers=st.integers(1, 9), batch=st.sampled_from([1, 7, 250]))
def test_eval_chunks_cover_the_rows_in_whole_batches(rows: int, workers: int, batch: int) -> None:
    chunks = eval_chunks(rows, workers, batch)

    assert 1 <= len(chunks) <= workers
    assert chunks[0][0] == 0 and chunks[-1][1] == rows
    for (_, hi), (lo, _) in zip(chunks, chunks[1:], strict=False):
        assert hi == lo  # contiguous, in row order
    for lo, hi in chunks:
        assert hi > lo and lo % batch == 0
    sizes = [-(-(hi - lo) // batch) for lo, hi in chunks]  # batches per share
    assert max(sizes) - min(sizes) <= 1


def _digits() -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    data = load_digits_data()
    model = build_model("digits_mlp", seed=3)
    return model, get_flat_params(model), data.x_test, data.y_test


@pytest.mark.parametrize("cut", [0, 1, 2, 3])
def test_sums_of_whole_batch_shares_joined_in_order_are_evaluate_bit_for_bit(cut: int) -> None:
    # Prepare: the digits test set (at batch 50: several batches) split after `cut` batches
    model, params, x, y = _digits()
    batch = 50
    at = min(len(x), cut * batch)

    # Execute
    whole = evaluate(model, params, x, y, batch_size=batch)
    first = evaluation_sums(model, params, x[:at], y[:at], batch) if at else (0, [])
    second = evaluation_sums(model, params, x[at:], y[at:], batch)
    joined = evaluation_result(first[0] + second[0], first[1] + second[1], y.size)

    # Assert: the same floats, not merely close
    assert joined == whole
    assert len(first[1]) + len(second[1]) == -(-len(x) // batch)


def _context(**test: Any) -> TrainContext:
    """The digits MLP's training context, with the test set `test` (x_test, y_test) if any."""
    data = load_digits_data()
    return TrainContext(
        "digits_mlp", data.x_train, data.y_train, epochs=1, batch_size=8, lr=0.1, **test
    )


@pytest.fixture(scope="module")
def pool() -> Any:
    data = load_digits_data()
    backend = ProcessPoolBackend(workers=2)
    backend.start(_context(x_test=data.x_test, y_test=data.y_test))
    yield backend
    backend.close()


def test_pool_evaluation_is_the_in_process_evaluation(pool: ProcessPoolBackend) -> None:
    # Prepare: two models' params
    model, params, x, y = _digits()
    other = params + np.float32(0.05)

    # Execute
    got = [pool.evaluate(p) for p in (params, other)]
    want = [evaluate(model, p, x, y) for p in (params, other)]
    same_batches = [evaluate(model, p, x, y, batch_size=EVAL_BATCH) for p in (params, other)]

    # Assert: the accuracy exactly; the loss to float tolerance (the workers run one torch
    # thread, this process may run more: a kernel may sum in another order)
    for (acc, loss), (acc_want, loss_want) in zip(got, want, strict=True):  # type: ignore[misc]
        assert acc == acc_want
        assert loss == pytest.approx(loss_want, rel=1e-6)
    for (acc, loss), (acc_same, loss_same) in zip(got, same_batches, strict=True):  # type: ignore[misc]
        assert acc == acc_same
        assert loss == pytest.approx(loss_same, rel=1e-6)
    assert got[0] != got[1]


def test_a_context_without_a_test_set_evaluates_nothing_in_the_pool() -> None:
    backend = ProcessPoolBackend(workers=1)
    backend.start(_context())
    try:
        assert backend.evaluate(get_flat_params(build_model("digits_mlp"))) is None
    finally:
        backend.close()


def test_a_worker_failing_its_evaluation_fails_the_call_and_closes_the_pool() -> None:
    # Prepare: test rows the model cannot take (32 features, the MLP wants 64), not checked
    # beforehand (the runner checks with `check_evaluation_data`; this calls the pool directly)
    ctx = _context(x_test=np.zeros((300, 32), np.float32), y_test=np.zeros(300, np.int64))
    backend = ProcessPoolBackend(workers=2)
    backend.start(ctx)
    try:
        # Execute / Assert: the worker's traceback in the error, and the pool closed
        with pytest.raises(PoolWorkerError, match="a worker failed"):
            backend.evaluate(get_flat_params(build_model("digits_mlp")))
        with pytest.raises(RuntimeError, match="not started"):
            backend.evaluate(get_flat_params(build_model("digits_mlp")))
    finally:
        backend.close()


def test_train_context_takes_the_test_set_whole() -> None:
    data = load_digits_data()
    base: dict[str, Any] = {"epochs": 1, "batch_size": 8, "lr": 0.1}
    with pytest.raises(ValueError, match="give both or neither"):
        TrainContext("digits_mlp", data.x_train, data.y_train, x_test=data.x_test, **base)
    with pytest.raises(ValueError, match="one label per row"):
        TrainContext(
            "digits_mlp",
            data.x_train,
            data.y_train,
            x_test=data.x_test,
            y_test=data.y_test[:-1],
            **base,
        )


CFG = runner.SimConfig(
    dataset="digits", model="digits_mlp", clients=8, per_round=4, rounds=2, local_epochs=1
)


def test_a_pool_run_evaluates_in_the_workers_with_the_sequential_runs_figures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the sequential run's figures; then this process's evaluate made to fail, so a
    # pool run that called it here would fail
    seq = runner.run_simulation(CFG, progress=False, backend=SequentialBackend())

    def not_here(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("evaluated in the driver")

    monkeypatch.setattr(sdk.trainer, "evaluate", not_here)

    # Execute
    pool = runner.run_simulation(
        replace(CFG, backend="pool"), progress=False, backend=ProcessPoolBackend(workers=2)
    )

    # Assert: every round evaluated, with the sequential run's accuracy and loss
    assert [r.accuracy for r in pool.records] == [r.accuracy for r in seq.records]
    for a, b in zip(pool.records, seq.records, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-5)


def _bad_test_label(monkeypatch: pytest.MonkeyPatch, row: int) -> None:
    """`runner.prepare` made to give the digits test set a label past the model's 10 classes
    at `row`."""
    real = runner.prepare

    def bad_labels(cfg: Any) -> Any:
        setup = real(cfg)
        y = setup.data.y_test.copy()
        y[row] = 10
        return replace(setup, data=replace(setup.data, y_test=y))

    monkeypatch.setattr(runner, "prepare", bad_labels)


class _EvaluatingBackend(SequentialBackend):
    """A backend that says it evaluates in its workers, and records whether it was asked."""

    calls = 0

    def evaluate(self, params: np.ndarray) -> tuple[float, float] | None:
        type(self).calls += 1
        return None


def test_a_test_set_the_model_cannot_take_is_refused_before_the_first_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the digits test labels past the model's 10 classes
    _bad_test_label(monkeypatch, -1)
    backend = _EvaluatingBackend()
    trained: list[int] = []

    def train(params: np.ndarray, jobs: Any) -> list[Any]:
        trained.append(len(jobs))
        return []

    monkeypatch.setattr(backend, "train", train)

    # Execute / Assert: evaluate's own words, before any training
    with pytest.raises(TrainingDataError, match="evaluation data"):
        runner.run_simulation(CFG, progress=False, backend=backend)
    assert trained == [] and _EvaluatingBackend.calls == 0


def test_a_workers_batch_divides_evaluates_default() -> None:
    # Whole shares of EVAL_BATCH rows are whole shares of evaluate's 250-row batches too, so a
    # share's activations never exceed the driver's one batch
    import inspect

    default = inspect.signature(evaluate).parameters["batch_size"].default
    assert default % EVAL_BATCH == 0 and EVAL_BATCH < default


@pytest.mark.ray
def test_ray_actors_evaluate_as_the_pool_does() -> None:
    # Prepare: a local runtime with two actors, and the digits test set in the context
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    from mobile_sim.backends.ray_backend import RayBackend

    model, params, x, y = _digits()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    backend = RayBackend(workers=2)

    # Execute: the test set's rows split over two actors; then the same backend restarted
    # without a test set on one actor (as the pool's case above: `evaluate` answers None
    # before it asks any actor, and each actor is a new process importing torch, ~5 s)
    try:
        backend.start(_context(x_test=x, y_test=y))
        got = backend.evaluate(params)
        backend.close()
        backend.workers = 1
        backend.start(_context())
        none = backend.evaluate(params)
        backend.close()
    finally:
        ray.shutdown()

    # Assert: as in this process (the accuracy exactly), and nothing without a test set
    acc, loss = evaluate(model, params, x, y)
    assert got is not None and got[0] == acc
    assert got[1] == pytest.approx(loss, rel=1e-6)
    assert none is None


def test_job_timeout_bounds_training_tasks_not_an_evaluation_share(
    pool: ProcessPoolBackend,
) -> None:
    # Prepare: a stall limit no task could meet (helper-310's finding 5: a --job-timeout that
    # every training task met failed the run at its first evaluation, the pool closed)
    _, params, _, _ = _digits()
    pool.job_timeout_s = 1e-6

    # Execute / Assert: the evaluation runs under the automatic limit and the pool stays up
    try:
        assert pool.evaluate(params) is not None
        assert pool.evaluate(params) is not None
    finally:
        pool.job_timeout_s = None


def test_a_refused_test_set_leaves_no_pool_worker_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the digits test labels past the model's classes, and a run that builds its own
    # pool (helper-310's finding 4: the check ran after the pool had started, outside the
    # `try` that closes it, so its workers outlived the failed call)
    import multiprocessing

    _bad_test_label(monkeypatch, 0)
    before = {p.pid for p in multiprocessing.active_children()}

    # Execute
    with pytest.raises(TrainingDataError, match="evaluation data"):
        runner.run_simulation(replace(CFG, backend="pool", workers=2), progress=False)

    # Assert: no worker process of this call (none was started)
    assert {p.pid for p in multiprocessing.active_children()} <= before
