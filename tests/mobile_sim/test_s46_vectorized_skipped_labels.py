"""Stop 46: labels of -100 (`sdk.trainer.IGNORE_INDEX`, "skip this target") train the same on
the vectorized backend as on the sequential one.

The sequential trainer's cross-entropy leaves skipped targets out of each batch's mean, its
FedAvg weight counts only examples with a target, and its mean loss is over counted targets.
The vectorized backend's masked mean divided by every real row (skipped ones too), so its
steps were smaller, its weight counted skipped examples and its loss was diluted.
"""

from __future__ import annotations

import numpy as np
import pytest

from mobile_sim.backends import SequentialBackend, TrainContext, TrainJob
from mobile_sim.backends.vectorized import VectorizedBackend
from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from sdk.flat import get_flat_params
from sdk.trainer import IGNORE_INDEX

from .test_s43_backend_checks import one_thread  # noqa: F401 (a fixture)


def _jobs(sizes: list[int]) -> list[TrainJob]:
    rng = np.random.default_rng(7)
    return [
        TrainJob(f"dev-{i}", i, 1, 7, np.sort(rng.choice(1000, n, replace=False)))
        for i, n in enumerate(sizes)
    ]


@pytest.mark.parametrize("sizes", [[24, 24, 24], [9, 24, 17, 30]], ids=["equal", "uneven"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.usefixtures("one_thread")
def test_skipped_labels_train_as_on_the_sequential_backend(
    sizes: list[int], momentum: float
) -> None:
    # Prepare: a third of every device's labels skipped, and all of one batch's of device 1
    data = load_digits_data()
    y = data.y_train.copy()
    jobs = _jobs(sizes)
    for job in jobs:
        y[job.indices[::3]] = IGNORE_INDEX
    y[jobs[1].indices[:8]] = IGNORE_INDEX
    ctx = TrainContext(
        "digits_mlp", data.x_train, y, epochs=2, batch_size=8, lr=0.1, momentum=momentum
    )
    params = get_flat_params(build_model("digits_mlp"))
    seq, vec = SequentialBackend(), VectorizedBackend()
    seq.start(ctx)
    vec.start(ctx)
    assert vec.fallback_reason is None  # the vmapped path is the one checked

    # Execute
    want = {r.device_id: r for r in seq.train(params, jobs)}
    got = {r.device_id: r for r in vec.train(params, jobs)}

    # Assert: the same weight (examples with a target), loss and update
    assert set(got) == set(want)
    for dev, w in want.items():
        g = got[dev]
        counted = int(np.count_nonzero(y[jobs[int(dev[4:])].indices] != IGNORE_INDEX))
        assert g.num_examples == w.num_examples == counted
        assert g.loss == pytest.approx(w.loss, rel=1e-5)
        np.testing.assert_allclose(g.delta, w.delta, rtol=1e-4, atol=1e-6)


def test_a_device_whose_labels_are_all_skipped_is_refused_in_the_trainers_words() -> None:
    # Prepare: device 2's labels all skipped; the chunk's other devices have targets
    data = load_digits_data()
    y = data.y_train.copy()
    jobs = _jobs([20, 20, 20])
    y[jobs[2].indices] = IGNORE_INDEX
    ctx = TrainContext("digits_mlp", data.x_train, y, epochs=1, batch_size=8, lr=0.1)
    params = get_flat_params(build_model("digits_mlp"))
    seq, vec = SequentialBackend(), VectorizedBackend()
    seq.start(ctx)
    vec.start(ctx)

    # Execute
    with pytest.raises(ValueError) as seq_err:
        seq.train(params, jobs)
    with pytest.raises(ValueError) as vec_err:
        vec.train(params, jobs)

    # Assert
    assert "every label is -100 (skipped)" in str(seq_err.value)
    assert str(vec_err.value) == str(seq_err.value)
