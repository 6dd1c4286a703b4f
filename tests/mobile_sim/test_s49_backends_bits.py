"""Which backends train bit for bit alike at one torch thread (docs/simulator.md, "Backends";
helper review, stop 49). A vectorized client's result depended on which other clients shared
its vmap chunk: one that had run out of examples was held still by a separately rounded update
(`p - lr * g * gate`) for every client of the chunk, so a pool worker's share of the round gave
other last bits than the whole round in one process (a byte of `bytes_up` in some rounds,
weights within 1.5e-8), though the docs promised a pool run byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from mobile_sim.backends import TrainContext, TrainJob
from mobile_sim.backends._worker import split_jobs
from mobile_sim.backends.process_pool import ProcessPoolBackend
from mobile_sim.backends.vectorized import VectorizedBackend
from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from mobile_sim.runner import SimConfig, SimResult, run_simulation
from sdk.flat import get_flat_params


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread, as a pool worker trains, put back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_vectorized_clients_result_does_not_depend_on_the_others_in_its_chunk(
    momentum: float,
) -> None:
    # Prepare: 12 jobs of 3 to 59 examples (clients run out of examples at different steps)
    data = load_digits_data()
    rng = np.random.default_rng(0)
    ctx = TrainContext(
        "digits_mlp", data.x_train, data.y_train, epochs=2, batch_size=10, lr=0.2, momentum=momentum
    )
    jobs = [
        TrainJob(f"dev-{i}", i, 1, 0, np.sort(rng.choice(len(data.y_train), n, replace=False)))
        for i, n in enumerate(rng.integers(3, 60, 12).tolist())
    ]
    params = get_flat_params(build_model("digits_mlp"))
    backend = VectorizedBackend()
    backend.start(ctx)

    # Execute: the whole round in one chunk, then the shares a pool of 2, 3 or 12 would get
    whole = {r.device_id: r for r in backend.train(params, jobs)}
    shares = {
        parts: [
            r
            for share in split_jobs(jobs, parts)
            for r in backend.train(params, [jobs[i] for i in share])
        ]
        for parts in (2, 3, 12)
    }

    # Assert: every client's delta and loss are the same bits, whatever it shared a chunk with
    for parts, results in shares.items():
        assert len(results) == len(jobs)
        for r in results:
            ref = whole[r.device_id]
            assert np.array_equal(r.delta, ref.delta), (parts, r.device_id)
            assert (r.loss, r.num_examples) == (ref.loss, ref.num_examples), (parts, r.device_id)


def _trained(result: SimResult) -> list[tuple[object, ...]]:
    """What training decides in each round, to the bit (evaluation left out: the pool's
    workers evaluate in 125-row batches, the in-process backends in 250-row ones)."""
    return [(r.bytes_up, r.train_loss, r.reports) for r in result.records]


@pytest.mark.usefixtures("one_thread")
def test_pool_runs_match_in_process_runs_of_their_inner_backend_bit_for_bit() -> None:
    # Prepare: uneven clients (Dirichlet), momentum and top-k with error feedback, where a
    # last-bit difference in a delta changes the coordinates kept; 13 devices a round on two
    # workers (vectorized: shares of 6 and 7)
    cfg = SimConfig(
        dataset="digits",
        model="digits_mlp",
        clients=40,
        per_round=13,
        rounds=4,
        topk=0.1,
        bits=8,
        local_epochs=2,
        batch_size=10,
        lr=0.2,
        momentum=0.9,
        partition="dirichlet",
        alpha=0.5,
        seed=5,
    )

    # Execute
    runs = {
        name: run_simulation(replace(cfg, backend=name), progress=False)
        for name in ("sequential", "vectorized")
    }
    pooled = {}
    for inner in ("sequential", "vectorized"):
        pool = ProcessPoolBackend(workers=2, inner=inner)
        try:
            pooled[inner] = run_simulation(
                replace(cfg, backend="pool"), progress=False, backend=pool
            )
        finally:
            pool.close()

    # Assert: each pool run is its inner backend's in-process run, weights and all; the two
    # inner backends agree to float tolerance only
    for inner, run in pooled.items():
        assert _trained(run) == _trained(runs[inner]), inner
        assert np.array_equal(run.final_params, runs[inner].final_params), inner
        assert [r.accuracy for r in run.records] == [r.accuracy for r in runs[inner].records]
    np.testing.assert_allclose(
        runs["vectorized"].final_params, runs["sequential"].final_params, atol=1e-5
    )
