"""Every backend trains the same jobs to the same deltas (float tolerance) for the same seed."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from mobile_sim import models
from mobile_sim.backends import JobResult, SequentialBackend, TrainContext, TrainJob
from mobile_sim.backends._worker import split_jobs
from mobile_sim.backends.process_pool import ProcessPoolBackend
from mobile_sim.backends.vectorized import VectorizedBackend
from mobile_sim.data import load_digits_data
from mobile_sim.datasets import load_shakespeare
from mobile_sim.models import build_model
from mobile_sim.runner import SimConfig, run_simulation
from sdk.flat import get_flat_params


class _FlipLabels:
    """A data attack: label y -> 9 - y (uses its rng so the stream must match too)."""

    def poison_data(
        self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        keep = rng.random(len(y)) < 0.2
        return x, np.where(keep, y, 9 - y)


def _digits_jobs(n: int, *, seed: int = 0) -> tuple[TrainContext, np.ndarray, list[TrainJob]]:
    data = load_digits_data()
    rng = np.random.default_rng(seed)
    ctx = TrainContext("digits_mlp", data.x_train, data.y_train, epochs=2, batch_size=8, lr=0.1)
    jobs = [
        TrainJob(
            device_id=f"dev-{i}",
            device_index=i,
            round_id=3,
            seed=seed,
            # Uneven sizes (1..37): batches differ per client and the last one is partial.
            indices=np.sort(rng.choice(len(data.x_train), size=1 + (i * 7) % 37, replace=False)),
            data_attack=_FlipLabels() if i % 5 == 0 else None,
        )
        for i in range(n)
    ]
    return ctx, get_flat_params(build_model("digits_mlp")), jobs


def _assert_same(a: list[JobResult], b: list[JobResult], atol: float = 1e-5) -> None:
    assert [r.device_id for r in a] == [r.device_id for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.num_examples == rb.num_examples
        np.testing.assert_allclose(ra.delta, rb.delta, atol=atol, rtol=1e-4)
        assert ra.loss == pytest.approx(rb.loss, rel=1e-4, abs=1e-6)


def _reference(ctx: TrainContext, params: np.ndarray, jobs: list[TrainJob]) -> list[JobResult]:
    seq = SequentialBackend()
    seq.start(ctx)
    return seq.train(params, jobs)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_vectorized_matches_sequential(momentum: float) -> None:
    # Prepare
    torch.set_num_threads(1)
    ctx, params, jobs = _digits_jobs(24)
    ctx = replace(ctx, momentum=momentum)
    vec = VectorizedBackend(max_floats=10 * params.size)  # several chunks of 10 clients

    # Execute
    vec.start(ctx)
    got = vec.train(params, jobs)
    vec.close()

    # Assert
    assert vec.fallback_reason is None
    _assert_same(_reference(ctx, params, jobs), got)


def test_vectorized_matches_sequential_on_the_char_lstm() -> None:
    # Prepare: four speakers, short sequences to keep the test fast.
    torch.set_num_threads(1)
    text = load_shakespeare(seq_len=12, stride=60, max_clients=4)
    ctx = TrainContext(
        "shakespeare_lstm_small", text.x_train, text.y_train, epochs=1, batch_size=16, lr=0.5
    )
    jobs = [TrainJob(f"spk-{i}", i, 1, 0, g[:40]) for i, g in enumerate(text.train_groups)]
    params = get_flat_params(build_model("shakespeare_lstm_small"))
    vec = VectorizedBackend()

    # Execute
    vec.start(ctx)
    got = vec.train(params, jobs)

    # Assert
    assert vec.fallback_reason is None
    _assert_same(_reference(ctx, params, jobs), got)


class _ItemNet(nn.Module):
    """A model vmap cannot batch: it reads a tensor's value in Python."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x) * (1.0 + 0.0 * float(x.sum().item()))
        return out


def test_unvmappable_model_falls_back_with_a_clear_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    monkeypatch.setitem(models.MODELS, "item_net", _ItemNet)
    ctx, _, jobs = _digits_jobs(4)
    ctx = replace(ctx, model="item_net")
    params = get_flat_params(build_model("item_net"))
    vec = VectorizedBackend()

    # Execute
    with caplog.at_level(logging.WARNING, logger="mobile_sim.backends.vectorized"):
        vec.start(ctx)
    got = vec.train(params, jobs)

    # Assert
    assert vec.fallback_reason is not None and ".item()" in vec.fallback_reason
    assert "one by one" in caplog.text
    _assert_same(_reference(ctx, params, jobs), got)


def test_process_pool_matches_sequential() -> None:
    # Prepare
    ctx, params, jobs = _digits_jobs(10)
    pool = ProcessPoolBackend(workers=2, inner="vectorized")

    # Execute
    pool.start(ctx)
    try:
        got = pool.train(params, jobs)
        again = pool.train(params, jobs[:3])
    finally:
        pool.close()

    # Assert
    _assert_same(_reference(ctx, params, jobs), got)
    _assert_same(got[:3], again)


@pytest.mark.ray
def test_ray_matches_sequential_on_a_local_runtime() -> None:
    # Prepare
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    from mobile_sim.backends.ray_backend import RayBackend

    ctx, params, jobs = _digits_jobs(8)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    backend = RayBackend(workers=2)

    # Execute
    try:
        backend.start(ctx)
        got = backend.train(params, jobs)
        backend.close()
    finally:
        ray.shutdown()

    # Assert
    _assert_same(_reference(ctx, params, jobs), got)


def test_whole_runs_agree_across_inline_backends() -> None:
    # Prepare: the full pipeline (train, encode with error feedback, decode, aggregate).
    torch.set_num_threads(1)
    cfg = SimConfig(
        dataset="digits",
        model="digits_mlp",
        clients=12,
        per_round=6,
        rounds=3,
        topk=0.1,
        bits=8,
        local_epochs=2,
        batch_size=10,
        lr=0.2,
        partition="dirichlet",
        alpha=0.5,
        seed=4,
    )

    # Execute
    seq = run_simulation(cfg, progress=False)
    vec = run_simulation(replace(cfg, backend="vectorized"), progress=False)

    # Assert
    np.testing.assert_allclose(seq.final_params, vec.final_params, atol=1e-4)
    assert [r.accuracy for r in seq.records] == pytest.approx(
        [r.accuracy for r in vec.records], abs=0.01
    )


def test_split_jobs_balances_work_and_keeps_every_job_once() -> None:
    _, _, jobs = _digits_jobs(30)
    shares = split_jobs(jobs, 4)
    flat = sorted(i for s in shares for i in s)
    assert flat == list(range(30))
    loads = [sum(len(jobs[i].indices) for i in s) for s in shares]
    assert max(loads) - min(loads) <= 37
    assert sorted(split_jobs(jobs[:2], 8)) == [[0], [1]]
    with pytest.raises(ValueError, match="parts"):
        split_jobs(jobs, 0)


def test_backends_refuse_bad_settings() -> None:
    with pytest.raises(ValueError, match="workers"):
        ProcessPoolBackend(workers=0)
    with pytest.raises(ValueError, match="inner"):
        ProcessPoolBackend(inner="gpu")
    with pytest.raises(ValueError, match="max_floats"):
        VectorizedBackend(max_floats=0)
    with pytest.raises(RuntimeError, match="not started"):
        VectorizedBackend().train(np.zeros(3, dtype=np.float32), [])
