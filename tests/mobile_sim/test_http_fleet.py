"""mobile_sim over HTTP: a small fleet of async clients against an embedded loopback coordinator."""

from __future__ import annotations

import re

import pytest

from mobile_sim.http_fleet import HttpFleetOptions, run_http_simulation
from mobile_sim.runner import SimConfig

# A small fleet that runs in seconds: 6 digits-MLP devices, 3 a round, 2 rounds.
SMALL_FLEET = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=6,
    per_round=3,
    rounds=2,
    topk=0.1,
    bits=8,
    local_epochs=1,
    batch_size=16,
    partition="iid",
    seed=0,
)


def test_http_fleet_matches_the_inproc_record_shape() -> None:
    # Prepare
    cfg = SMALL_FLEET
    # Execute
    result = run_http_simulation(cfg, progress=False, label="http")
    # Assert: every round committed with its reports; bytes come from the coordinator's ledger
    assert [r.round for r in result.records] == [1, 2]
    for rec in result.records:
        assert rec.committed and rec.reports == 3
        assert rec.accuracy is not None and 0.0 <= rec.accuracy <= 1.0
        assert 0 < rec.bytes_up < rec.dense_up and rec.wire_up > rec.bytes_up
        assert rec.bytes_down > 0 and rec.wire_down > rec.bytes_down
        assert rec.ratio_up is not None and rec.ratio_up > 1
        totals = result.ledger.round_totals(rec.round)
        assert totals["up"]["payload_bytes"] == rec.bytes_up
        assert totals["down"]["wire_bytes"] == rec.wire_down
    assert result.final_params.shape == (result.num_params,)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"attack": "signflip", "malicious": 0.25}, "attacks"),
        ({"fleet": "realistic"}, "the realistic fleet (availability, tier dropouts)"),
        ({"deadline_s": 30.0}, "a simulated deadline"),
        ({"backend": "pool"}, "the pool backend"),
        ({"backend": "pool", "job_timeout_s": 5.0}, "the pool backend, a job timeout"),
    ],
)
def test_http_fleet_refuses_what_only_inproc_runs(setting: dict[str, object], named: str) -> None:
    # Prepare: each of these was silently ignored by the HTTP fleet, except attacks
    cfg = SimConfig(dataset="digits", model="digits_mlp", clients=4, per_round=2, rounds=1,
                    **setting)  # type: ignore[arg-type]  # fmt: skip
    # Execute / Assert: refused before any server starts, naming the setting
    with pytest.raises(ValueError, match=f"in wall time; {re.escape(named)}.* --transport inproc"):
        run_http_simulation(cfg, progress=False, options=HttpFleetOptions())
