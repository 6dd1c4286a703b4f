"""Over HTTP each round records how many simulated devices it could select from (`available`)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

from coordinator.secure import SecureConfig
from mobile_sim.http_fleet import HttpFleetOptions, _Occupancy, run_http_simulation
from mobile_sim.report import write_run
from mobile_sim.runner import SimConfig
from mobile_sim.secure import run_secure_simulation

from .test_http_fleet import SMALL_FLEET


def test_available_is_the_fleet_minus_the_devices_busy_when_the_round_opened() -> None:
    # Prepare: 4 devices; device 0 busy over [1, 3), device 1 over [2, 5) then again from 6
    # (still busy), device 2 over [0, 1) and [4, 7); device 3 never.
    occ = _Occupancy(4)
    occ.begin(0, 1.0)[1] = 3.0
    occ.begin(1, 2.0)[1] = 5.0
    occ.begin(1, 6.0)
    occ.begin(2, 0.0)[1] = 1.0
    occ.begin(2, 4.0)[1] = 7.0
    # Execute / Assert: a spell covers [start, end); one begun after t does not count.
    assert [occ.available_at(t) for t in (0.5, 1.0, 2.5, 3.0, 4.5, 5.0, 6.5, 7.0, 9.0)] == [
        3, 3, 2, 3, 2, 3, 2, 3, 3,
    ]  # fmt: skip


def test_http_rounds_record_available_in_the_record_csv_and_json(tmp_path: Path) -> None:
    # Prepare: 6 devices, 3 a round, a third of the selected drop out and sit the round out
    # until its 1 s deadline; min_reports 1 so short rounds still commit.
    cfg = replace(SMALL_FLEET, min_reports=1, rounds=3)
    opts = HttpFleetOptions(dropout=0.34, deadline_s=1.0)
    # Execute
    result = run_http_simulation(cfg, progress=False, label="http", options=opts)
    paths = write_run(result, tmp_path)
    # Assert: every round has a count (None before), between the devices that reported and the
    # fleet; nobody was busy when round 1 opened.
    avail = [r.available for r in result.records]
    assert all(isinstance(n, int) for n in avail), avail
    assert avail[0] == cfg.clients
    for rec in result.records:
        assert rec.available is not None and rec.reports <= rec.available <= cfg.clients
    with open(paths["csv"], newline="") as f:
        assert [int(row["available"]) for row in csv.DictReader(f)] == avail
    rounds = json.loads(Path(paths["json"]).read_text())["rounds"]
    assert [r["available"] for r in rounds] == avail


def test_secure_rounds_record_the_fleet_they_draw_from() -> None:
    # Prepare: secure rounds draw each cohort uniformly from every device of the fleet
    cfg = SimConfig(dataset="digits", model="digits_mlp", clients=10, per_round=4, rounds=2,
                    local_epochs=1, batch_size=10, partition="iid")  # fmt: skip
    # Execute
    res = run_secure_simulation(cfg, SecureConfig(coord_fraction=0.5), dropout=0.0, progress=False)
    # Assert: None before
    assert [r.available for r in res.records] == [10, 10]
