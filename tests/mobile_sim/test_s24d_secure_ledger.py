"""`plume sim --secure`: rounds.json's rounds and its ledger totals (and ledger.csv) agree on
the dense baselines. Before, the rounds' dense_up was 4 d x contributors (121x vs dense in the
summary) while every upload row of the ledger had dense_bytes 0 (`ledger_totals.up`:
dense_bytes 0, ratio_vs_dense 0.0)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from coordinator.cli import main as plume
from coordinator.secure import SecureConfig
from mobile_sim.runner import SimConfig
from mobile_sim.secure import run_secure_simulation

_CFG = SimConfig(dataset="digits", model="digits_mlp", clients=10, per_round=5, rounds=2,
                 local_epochs=1, batch_size=10, partition="iid", seed=1)  # fmt: skip


@pytest.mark.parametrize("transport", ["inproc", "http"])
def test_the_rounds_dense_bytes_are_the_ledgers(transport: str) -> None:
    torch.set_num_threads(1)

    res = run_secure_simulation(
        _CFG, SecureConfig(coord_fraction=0.5), dropout=0.2, progress=False, transport=transport
    )

    d = res.num_params
    totals = res.ledger.totals()
    assert totals["up"]["dense_bytes"] == sum(r.dense_up for r in res.records) > 0
    assert totals["down"]["dense_bytes"] == sum(r.dense_down for r in res.records)
    for rec in res.records:
        rows = res.ledger.rows(rec.round)
        assert rec.dense_up == sum(r.dense_bytes for r in rows if r.direction == "up")
        # one fp32 model per masked input the server took
        assert rec.dense_up % (4 * d) == 0 and rec.dense_up // (4 * d) >= rec.reports
    assert totals["up"]["ratio_vs_dense"] == pytest.approx(res.upload_ratio)


def test_plume_sim_secure_writes_agreeing_files(tmp_path: Path) -> None:
    # Execute: the reviewer's repro, smaller (digits, 2 rounds)
    code = plume(["sim", "--secure", "--dataset", "digits", "--clients", "10", "--per-round",
                  "5", "--rounds", "2", "--local-epochs", "1", "--no-progress",
                  "--out", str(tmp_path)])  # fmt: skip
    assert code == 0

    # Assert: ledger.csv's upload rows, rounds.json's ledger totals, its rounds and summary
    doc = json.loads((tmp_path / "rounds.json").read_text())
    with (tmp_path / "ledger.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["direction"] == "up"]
    dense_csv = sum(int(r["dense_bytes"]) for r in rows)
    payload_csv = sum(int(r["payload_bytes"]) for r in rows)
    up = doc["ledger_totals"]["up"]
    assert dense_csv == up["dense_bytes"] == sum(r["dense_up"] for r in doc["rounds"]) > 0
    assert up["ratio_vs_dense"] == pytest.approx(dense_csv / payload_csv)
    assert doc["summary"]["upload_ratio_vs_dense"] == pytest.approx(up["ratio_vs_dense"])
