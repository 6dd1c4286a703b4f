"""The runner's batched round path (encode_many + submit_many) equals the per-device path."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mobile_sim import runner
from mobile_sim.runner import SimConfig, SimResult, run_simulation

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
