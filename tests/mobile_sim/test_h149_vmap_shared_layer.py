"""The vectorized backend on a model that applies one layer twice: it trains as the sequential
trainer does, and leaves the module it was given as it was (torch.func.functional_call left a
shared layer's parameters as dead functorch tensors: pytorch/pytorch#164759)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mobile_sim.backends.vectorized import train_clients_vmapped
from sdk.trainer import TorchTrainer


def _reused() -> nn.Module:
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    return nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(4, 3))


def test_vmapped_training_of_a_reused_layer_matches_torch_and_leaves_the_module() -> None:
    # Prepare
    torch.set_num_threads(1)
    model = _reused()
    before = [p.detach().clone() for p in model.parameters()]
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (6, 4)]
    ys = [rng.integers(0, 3, len(x)) for x in xs]

    # Execute
    got, _ = train_clients_vmapped(
        model,
        start,
        xs,
        ys,
        [np.random.default_rng(1), np.random.default_rng(2)],
        epochs=2,
        batch_size=3,
        lr=0.1,
        momentum=0.9,
    )

    # Assert: the module's parameters are plain Parameters with their old values...
    for p, b in zip(model.parameters(), before, strict=True):
        assert type(p) is nn.Parameter and type(p.data) is torch.Tensor
        assert torch.equal(p.detach(), b)
    assert model[0] is model[2]
    with torch.no_grad():
        model(torch.zeros(2, 4))
    # ... and each client's update is the sequential trainer's (both uses' gradients summed).
    for k, seed in enumerate((1, 2)):
        want = TorchTrainer(_reused(), momentum=0.9).train(
            start.copy(), xs[k], ys[k], epochs=2, batch_size=3, lr=0.1,
            rng=np.random.default_rng(seed),
        )  # fmt: skip
        np.testing.assert_allclose(got[k], want.params, atol=1e-6)
