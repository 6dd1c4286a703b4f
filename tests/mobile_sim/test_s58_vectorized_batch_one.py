"""A vectorized client's result does not depend on the clients it shares a vmap chunk with,
at batch size 1 too (docs/simulator.md, "Backends": `--backend vectorized --threads 1` and the
pool or Ray with `--inner-backend vectorized` are the same bits however the round's devices are
shared). Before, a one-row step took torch's matrix-vector kernels, and the clients at odd
places of a chunk of several got other last bits than trained alone (the digits MLP, 4 of 4
cases here); test_s57i_backend_equivalence's chunking property found it. The suite runs torch on one
thread (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_sim.backends import TrainContext, TrainJob
from mobile_sim.backends.vectorized import VectorizedBackend
from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from sdk.flat import get_flat_params


@pytest.mark.parametrize("examples", [1, 3])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_batch_size_one_gives_each_client_the_same_bits_in_any_chunk(
    examples: int, momentum: float
) -> None:
    # Prepare: four clients of `examples` examples each, minibatches of one
    data = load_digits_data()
    ctx = TrainContext(
        "digits_mlp", data.x_train, data.y_train, epochs=2, batch_size=1, lr=0.05,
        momentum=momentum,
    )  # fmt: skip
    rng = np.random.default_rng(58)
    jobs = [
        TrainJob(f"dev-{i}", i, 1, 7, np.sort(rng.choice(len(data.y_train), examples, False)))
        for i in range(4)
    ]
    params = get_flat_params(build_model("digits_mlp", seed=0))

    # Execute: the round in one chunk, in chunks of one client, and of three
    results = []
    for per_chunk in (None, 1, 3):
        limit = {} if per_chunk is None else {"max_floats": per_chunk * params.size}
        backend = VectorizedBackend(**limit)
        backend.start(ctx)
        results.append(backend.train(params, jobs))
        backend.close()

    # Assert: every client's delta and loss are the same bits in all three
    whole = results[0]
    assert all(np.any(r.delta != 0) for r in whole)  # they trained
    for other in results[1:]:
        for a, b in zip(whole, other, strict=True):
            assert a.device_id == b.device_id
            assert np.array_equal(a.delta, b.delta), a.device_id
            assert a.loss == b.loss, a.device_id
