"""Params of the wrong length (or, for training, NaN or infinite ones) are refused in the
parent, before any work is sent: `check_round` (given the model's parameter count) raises a
ValueError naming the count expected and the length given, in `train` on every backend and in
the pool's and Ray's `evaluate`, and the pool's workers and Ray's actors stay usable. Before,
the pool failed inside a worker (`PoolWorkerError`, the pool closed) for `evaluate` and `train`
alike (and for NaN params in `train`), Ray raised the actor's traceback, and the inline
backends failed in `set_flat_params` / `_unflatten` with the model's count or the length
missing from the message (the vectorized one trained NaN deltas from NaN params)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from mobile_sim import runner
from mobile_sim.backends import SequentialBackend, TrainContext, TrainJob
from mobile_sim.backends._base import check_round
from mobile_sim.backends.process_pool import ProcessPoolBackend
from mobile_sim.backends.vectorized import VectorizedBackend
from mobile_sim.data import FederatedData, load_digits_data
from mobile_sim.models import build_model
from sdk.flat import get_flat_params


def _setup() -> tuple[FederatedData, TrainContext, np.ndarray, list[TrainJob]]:
    """The digits data (with its test set in the context), the MLP's params (seed 3) and two
    jobs of 20 examples each."""
    data = load_digits_data()
    ctx = TrainContext(
        "digits_mlp",
        data.x_train,
        data.y_train,
        epochs=1,
        batch_size=8,
        lr=0.1,
        x_test=data.x_test,
        y_test=data.y_test,
    )
    params = get_flat_params(build_model("digits_mlp", seed=3))
    jobs = [
        TrainJob(f"dev-{k}", k, 1, 7, np.arange(20 * k, 20 * (k + 1), dtype=np.int64))
        for k in range(2)
    ]
    return data, ctx, params, jobs


def _wrong(params: np.ndarray) -> list[np.ndarray]:
    """Params one short and one long of the model's count."""
    return [params[:-1], np.concatenate([params, np.zeros(1, np.float32)])]


def _nonfinite(params: np.ndarray) -> list[np.ndarray]:
    """Params with one NaN, and with one inf."""
    out = []
    for value in (np.nan, np.inf):
        bad = params.copy()
        bad[5] = value
        out.append(bad)
    return out


def _says_expected_and_got(exc: BaseException, d: int, got: int) -> None:
    text = str(exc)
    assert f"float32[{d}]" in text and f"got {got}" in text, text
    assert "Traceback" not in text, text


def test_check_round_refuses_a_wrong_count_only_when_given_one() -> None:
    params = np.zeros(5, np.float32)
    check_round(params, (), 10)  # no count: any length, as before
    check_round(params, (), 10, size=5)
    with pytest.raises(ValueError) as info:
        check_round(params, (), 10, size=6)
    _says_expected_and_got(info.value, 6, 5)


@pytest.mark.parametrize("backend", [SequentialBackend, VectorizedBackend])
def test_inline_backends_refuse_a_wrong_length_in_train_with_the_same_words(
    backend: type[Any],
) -> None:
    # Prepare
    data, ctx, params, jobs = _setup()
    be = backend()
    be.start(ctx)
    try:
        # Execute / Assert: the same ValueError as the pool's and Ray's; then a correct round
        for bad in _wrong(params):
            with pytest.raises(ValueError) as info:
                be.train(bad, jobs)
            _says_expected_and_got(info.value, len(params), len(bad))
        assert len(be.train(params, jobs)) == 2
        # The inline backends have no `evaluate`: the runner evaluates in this process, where
        # a wrong length is a ValueError too (`set_flat_params`'s words)
        assert getattr(be, "evaluate", None) is None
        evaluate = runner.model_evaluator(be, build_model("digits_mlp"), data)
        for bad in _wrong(params):
            with pytest.raises(ValueError):
                evaluate(bad)
    finally:
        be.close()


@pytest.mark.parametrize("backend", [SequentialBackend, VectorizedBackend])
def test_inline_backends_refuse_nonfinite_params_in_train_with_the_same_words(
    backend: type[Any],
) -> None:
    # Prepare
    _, ctx, params, jobs = _setup()
    be = backend()
    be.start(ctx)
    try:
        # Execute / Assert: refused before training (before, the vectorized backend trained
        # NaN deltas from them); then a correct round
        for bad in _nonfinite(params):
            with pytest.raises(ValueError) as info:
                be.train(bad, jobs)
            assert str(info.value) == (
                "params hold 1 NaN or infinite value (the first at 5): training from them "
                "would make NaN parameters"
            )
        assert all(np.isfinite(r.delta).all() for r in be.train(params, jobs))
    finally:
        be.close()


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolBackend]:
    _, ctx, _, _ = _setup()
    backend = ProcessPoolBackend(workers=1)
    backend.start(ctx)
    yield backend
    backend.close()


def _refused_and_still_usable(be: Any, params: np.ndarray, jobs: list[TrainJob]) -> None:
    """`be` (started with `_setup`'s context) refuses wrong-length params in `evaluate` and
    `train` with a ValueError naming both counts, and then evaluates and trains as before."""
    want = be.evaluate(params)
    assert want is not None
    for bad in _wrong(params):
        with pytest.raises(ValueError) as info:
            be.evaluate(bad)
        _says_expected_and_got(info.value, len(params), len(bad))
        with pytest.raises(ValueError) as info:
            be.train(bad, jobs)
        _says_expected_and_got(info.value, len(params), len(bad))
    # ... and NaN or infinite params in `train`, with the sequential trainer's words
    for bad in _nonfinite(params):
        with pytest.raises(ValueError, match=r"params hold 1 NaN or infinite value \(the first"):
            be.train(bad, jobs)
    # Still usable: the same evaluation, and a round trained
    assert be.evaluate(params) == want
    assert [r.device_id for r in be.train(params, jobs)] == ["dev-0", "dev-1"]


def test_the_pool_still_refuses_a_wrong_shape_or_dtype_cleanly(pool: ProcessPoolBackend) -> None:
    # A guard (passed before too): check_round's shape and dtype checks, in the parent
    _, _, params, jobs = _setup()
    for bad in (params.reshape(1, -1), params.astype(np.int64)):
        with pytest.raises(ValueError):
            pool.evaluate(bad)
        with pytest.raises(ValueError):
            pool.train(bad, jobs)
    assert pool.evaluate(params) is not None


def test_the_pool_refuses_a_wrong_length_before_dispatch_and_stays_up(
    pool: ProcessPoolBackend,
) -> None:
    _, _, params, jobs = _setup()
    procs = list(pool._procs)

    _refused_and_still_usable(pool, params, jobs)

    # The same worker processes: none was stopped or restarted
    assert pool._procs == procs and all(p.is_alive() for p in procs)


@pytest.mark.ray
def test_ray_refuses_a_wrong_length_before_dispatch_and_its_actor_stays_up() -> None:
    # Prepare: one actor on the backend's own private runtime
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    from mobile_sim.backends.ray_backend import RayBackend

    _, ctx, params, jobs = _setup()
    backend = RayBackend(workers=1, num_cpus=1)
    try:
        backend.start(ctx)
        actors = list(backend._actors)

        # Execute / Assert
        _refused_and_still_usable(backend, params, jobs)
        assert backend._actors == actors
    finally:
        backend.close()
    assert not ray.is_initialized()
