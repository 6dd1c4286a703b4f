"""`--transport http` pays torch's one-time set-up before its devices start, as the in-process
backends do since 376bfdc: before, the first device's first `torch.optim.SGD` imported
torch._dynamo inside round 1, whose `wall s` read 2.2 s against 0.6 s for the rest."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("httpx")


def test_torch_is_warmed_up_before_the_first_device_trains_over_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: record the warm-up and every device's training, in order
    import sdk.trainer
    from mobile_sim.backends import sequential
    from mobile_sim.http_fleet import run_http_simulation
    from mobile_sim.runner import SimConfig

    events: list[str] = []
    warm, train = sequential.warm_torch, sdk.trainer.TorchTrainer.train

    def warm_spy() -> None:
        events.append("warm")
        warm()

    def train_spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        events.append("train")
        return train(self, *args, **kwargs)

    monkeypatch.setattr(sequential, "warm_torch", warm_spy)
    monkeypatch.setattr(sdk.trainer.TorchTrainer, "train", train_spy)
    cfg = SimConfig(dataset="digits", clients=4, per_round=2, rounds=1, local_epochs=1)

    # Execute
    run_http_simulation(cfg, progress=False)

    # Assert: warmed once, before any device trained
    assert events[0] == "warm" and events.count("warm") == 1
    assert events.count("train") >= 2


def test_the_warm_up_draws_nothing_from_torchs_rng() -> None:
    # Prepare
    from mobile_sim.backends.sequential import warm_torch

    torch.manual_seed(7)
    before = torch.get_rng_state()

    # Execute
    warm_torch()

    # Assert: the devices' training sees the same random stream as without it
    assert np.array_equal(before.numpy(), torch.get_rng_state().numpy())
