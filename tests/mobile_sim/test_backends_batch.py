"""The batched round path (cohort encode + submit_many, pooled job RNGs) equals the per-device one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobile_sim import runner
from mobile_sim.backends import SequentialBackend, TrainContext, TrainJob, job_rng
from mobile_sim.backends._seeding import RngPool
from mobile_sim.backends.vectorized import VectorizedBackend
from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from mobile_sim.runner import SimConfig, SimResult, run_simulation
from sdk.flat import get_flat_params

BASE = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=24,
    per_round=6,
    rounds=3,
    topk=0.05,
    bits=4,
    local_epochs=1,
    batch_size=10,
    lr=0.1,
    partition="iid",
    over_selection=1.5,  # 9 selected, 6 kept: 3 stragglers a round keep their update
    backend="vectorized",
    fleet="timing",
)


def _run(cfg: SimConfig, batch_min: int, monkeypatch: pytest.MonkeyPatch) -> SimResult:
    monkeypatch.setattr(runner, "BATCH_MIN", batch_min)
    return run_simulation(cfg, progress=False)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"error_feedback": False, "bits": 2, "index": "ef"},
        {"clip_norm": 0.05, "topk": 0.3, "bits": 8},
        {"warmup_rounds": 1, "backend": "sequential"},
    ],
)
def test_batched_round_path_is_bit_identical(
    changes: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    cfg = replace(BASE, **changes)  # type: ignore[arg-type]

    # Execute
    batched = _run(cfg, 2, monkeypatch)
    single = _run(cfg, 10**9, monkeypatch)  # every device through UpdateEncoder.encode

    # Assert: same model, same bytes, same stragglers, same losses
    np.testing.assert_array_equal(batched.final_params, single.final_params)
    assert batched.ledger.rows() == single.ledger.rows()
    for a, b in zip(batched.records, single.records, strict=True):
        assert (a.reports, a.bytes_up, a.train_loss, a.accuracy) == (
            b.reports,
            b.bytes_up,
            b.train_loss,
            b.accuracy,
        )
        assert a.measurements["clock"] == b.measurements["clock"]
    assert batched.records[0].measurements["clock"]["stragglers"] == 3


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**70)),  # > 2**32: job_rng
            st.integers(0, 10**6),
            st.integers(0, 2**32 - 1),
        ),
        min_size=1,
        max_size=20,
    ),
    stream=st.integers(0, 3),
)
def test_rng_pool_draws_what_job_rng_draws(rows: list[tuple[int, int, int]], stream: int) -> None:
    # Prepare
    jobs = [
        TrainJob(f"d{i}", dev, rnd, seed, np.arange(3)) for i, (seed, rnd, dev) in enumerate(rows)
    ]
    pool = RngPool()
    pool.for_jobs(jobs[::-1], stream)  # generators are reseeded on every call

    # Execute
    got = pool.for_jobs(jobs, stream)

    # Assert
    for job, gen in zip(jobs, got, strict=True):
        ref = job_rng(job, stream)
        assert (
            gen.random(5, dtype=np.float32).tobytes() == ref.random(5, dtype=np.float32).tobytes()
        )
        np.testing.assert_array_equal(gen.permutation(17), ref.permutation(17))
        assert gen.integers(0, 2**62) == ref.integers(0, 2**62)


class _NoOpAttack:
    """Leaves the data as it is, but sends its clients down the per-client data path."""

    def poison_data(
        self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return x, y


def test_vectorized_gather_path_matches_per_client_path_and_sequential() -> None:
    # Prepare: equal-size clean clients (one gather) and the same clients one by one
    data = load_digits_data()
    ctx = TrainContext("digits_mlp", data.x_train, data.y_train, epochs=2, batch_size=10, lr=0.1)
    params = get_flat_params(build_model("digits_mlp"))
    rng = np.random.default_rng(5)
    jobs = [
        TrainJob(f"dev-{i}", i, 2, 0, np.sort(rng.choice(len(data.x_train), 20, replace=False)))
        for i in range(12)
    ]
    flagged = [replace(j, data_attack=_NoOpAttack()) for j in jobs]

    # Execute
    vec = VectorizedBackend()
    vec.start(ctx)
    gathered, per_client = vec.train(params, jobs), vec.train(params, flagged)
    seq = SequentialBackend()
    seq.start(ctx)
    reference = seq.train(params, jobs)

    # Assert
    for a, b, r in zip(gathered, per_client, reference, strict=True):
        np.testing.assert_array_equal(a.delta, b.delta)
        assert (a.num_examples, a.loss) == (b.num_examples, b.loss) == (20, a.loss)
        np.testing.assert_allclose(a.delta, r.delta, atol=1e-5, rtol=1e-4)
