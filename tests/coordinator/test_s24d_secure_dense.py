"""A secure round's ledger gives each masked input its dense baseline, one fp32 model (4 bytes
a parameter), as the plain engine does for an accepted upload and the HTTP service for a
masked-input request. Before, `SecureRound` recorded every upload with dense_bytes 0, so a
`plume sim --secure` run's ledger.csv and rounds.json's `ledger_totals.up` said dense 0 and
ratio 0.0 while its rounds said 121x."""

from __future__ import annotations

import numpy as np

from coordinator.ledger import BandwidthLedger
from coordinator.secure import SecureConfig, SecureCoordinator
from mobile_sim.secure import STAGES, run_secure_round
from sdk.secure import SecureParticipant


def test_each_masked_input_has_one_dense_model_as_its_baseline() -> None:
    # Prepare: 10 devices, one dropping at each stage (the first three before their masked
    # input, the fourth after it, at unmask)
    d = 1500
    devs = [f"d{i:02d}" for i in range(10)]
    rng = np.random.default_rng(0)
    parts = {x: SecureParticipant(d) for x in devs}
    ups = {x: (rng.normal(0, 0.01, d).astype(np.float32), 1) for x in devs}
    drops = dict(zip(devs[:4], STAGES, strict=True))
    ledger = BandwidthLedger()
    coord = SecureCoordinator(
        np.zeros(d, np.float32), SecureConfig(coord_fraction=0.2), ledger=ledger
    )

    # Execute
    out, _ = run_secure_round(coord, parts, ups, drops)

    # Assert: the 7 masked inputs (the device lost at unmask sent its own) carry 4 d each
    assert out.committed and len(out.contributors) == 7
    up = [r for r in ledger.rows() if r.direction == "up"]
    masked = {r.device_id for r in up if r.dense_bytes}
    assert masked == set(devs) - set(devs[:3])
    assert all(r.dense_bytes == 4 * d for r in up if r.dense_bytes)
    assert len([r for r in up if r.dense_bytes]) == 7  # one row per masked input, no other
    totals = ledger.totals()["up"]
    assert totals["dense_bytes"] == 7 * 4 * d
    assert totals["ratio_vs_dense"] == totals["dense_bytes"] / totals["payload_bytes"] > 1
    # the stage downloads have no dense baseline (they carry no model)
    assert all(r.dense_bytes == 0 for r in ledger.rows() if r.direction == "down")
