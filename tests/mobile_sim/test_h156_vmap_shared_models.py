"""The vectorized backend on shared-layer models a deep copy cannot stand in for: it trains them
(as the sequential trainer does) on the module itself, leaving it as it was, and a failure to
build the vmapped step falls back to one-by-one training instead of ending the run.

dc24925 traced a `copy.deepcopy` of such a model; the copy raised for a model holding a lock and
for a reused layer with torch's hook-based weight norm, from `VectorizedBackend.start`, outside
its fallback probe.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from mobile_sim.backends import vectorized
from mobile_sim.backends._base import TrainContext, TrainJob
from mobile_sim.backends.vectorized import VectorizedBackend, train_clients_vmapped
from mobile_sim.models import MODELS
from sdk.trainer import TorchTrainer
from tests.sdk.test_h156_shared_models import _Closure, _Hooked, _Locked, _weight_norm_reused


def _clients() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (6, 4)]
    return xs, [rng.integers(0, 3, len(x)) for x in xs]


# vmap has no batching rule for the weight norm op (a slower fallback): torch says so.
@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize(
    "build", [_Locked, _weight_norm_reused, _Closure, _Hooked], ids=lambda b: b.__name__
)
def test_vmapped_training_of_a_model_a_copy_cannot_stand_in_for(
    build: Callable[[], nn.Module],
) -> None:
    # Prepare
    torch.set_num_threads(1)
    model = build()
    before = [p.detach().clone() for p in model.parameters()]
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()
    xs, ys = _clients()

    # Execute
    got, _ = train_clients_vmapped(
        model, start, xs, ys, [np.random.default_rng(1), np.random.default_rng(2)],
        epochs=2, batch_size=3, lr=0.1,
    )  # fmt: skip

    # Assert: the module as it was (plain Parameters, old values, forward runs)...
    for p, b in zip(model.parameters(), before, strict=True):
        assert type(p) is nn.Parameter and type(p.data) is torch.Tensor
        assert torch.equal(p.detach(), b)
    with torch.no_grad():
        assert bool(torch.isfinite(model(torch.ones(2, 4))).all())
    # ... and each client's parameters are the sequential trainer's
    for k, seed in enumerate((1, 2)):
        want = TorchTrainer(build()).train(
            start.copy(), xs[k], ys[k], epochs=2, batch_size=3, lr=0.1,
            rng=np.random.default_rng(seed),
        )  # fmt: skip
        assert np.abs(want.params - start).max() > 1e-3
        np.testing.assert_allclose(got[k], want.params, atol=1e-6)


def _context(name: str) -> TrainContext:
    xs, ys = _clients()
    return TrainContext(
        model=name, x_train=np.concatenate(xs), y_train=np.concatenate(ys).astype(np.int64),
        epochs=1, batch_size=3, lr=0.1,
    )  # fmt: skip


def _jobs() -> list[TrainJob]:
    return [
        TrainJob(f"d{k}", k, 0, 7 + k, np.arange(5 * k, 5 * k + 5, dtype=np.int64))
        for k in range(2)
    ]


def test_the_backend_trains_a_locked_shared_layer_model_vmapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    torch.set_num_threads(1)
    monkeypatch.setitem(MODELS, "h156_locked", _Locked)
    ctx = _context("h156_locked")
    backend = VectorizedBackend()

    # Execute
    backend.start(ctx)
    params = torch.cat([p.detach().reshape(-1) for p in _Locked().parameters()]).numpy()
    results = backend.train(params, _jobs())

    # Assert: no fallback, finite updates that move
    assert backend.fallback_reason is None
    assert len(results) == 2
    for r in results:
        assert np.isfinite(r.delta).all() and np.abs(r.delta).max() > 0


def test_a_step_that_cannot_be_built_falls_back_to_one_by_one_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: building the vmapped step raises (as the deep copy did for a lock)
    torch.set_num_threads(1)
    monkeypatch.setitem(MODELS, "h156_locked", _Locked)

    def broken(module: nn.Module) -> None:
        raise TypeError("cannot pickle '_thread.lock' object")

    monkeypatch.setattr(vectorized, "_step_fn", broken)
    ctx = _context("h156_locked")
    backend = VectorizedBackend()

    # Execute
    backend.start(ctx)
    params = torch.cat([p.detach().reshape(-1) for p in _Locked().parameters()]).numpy()
    results = backend.train(params, _jobs())

    # Assert: the reason is kept, and the clients trained one by one
    assert backend.fallback_reason == "TypeError: cannot pickle '_thread.lock' object"
    assert len(results) == 2 and all(np.isfinite(r.delta).all() for r in results)
