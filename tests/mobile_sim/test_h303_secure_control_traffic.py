"""A `--secure --transport http` run records its devices' control traffic, as a plain HTTP run
does (4766ce4): each round's `measurements.control_traffic` holds the exchanges of the fleet's
devices that no round's ledger holds (their registrations, the check-ins answered "wait" while
the cohort gathers), counted by each device's SDK (`Client.control_bandwidth`) during the round.
Before, such a run recorded none (its summary line, rounds.csv and `plume sim report` had no
control figure). Held here against a byte-counting TCP relay between the loopback coordinator
`HttpSecureFleet` starts and everything that talks to it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import coordinator.service
from coordinator.cli import main as plume
from coordinator.secure import SecureConfig
from mobile_sim.runner import SimConfig
from mobile_sim.secure import run_secure_simulation
from protocol.names import Path as Route
from tests.coordinator.wire_relay import ByteRelay, exchanges

KEYS = ("up_wire_bytes", "down_wire_bytes", "requests")
# 6 digits-MLP devices, 4 a round (a secure round needs 3), 2 rounds: round 2 selects some
# devices round 1 did not (they register then), the service opens a round with the whole cohort
CFG = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=6,
    per_round=4,
    rounds=2,
    local_epochs=1,
    batch_size=16,
    partition="iid",
    seed=3,
)
SECURE_TINY = [
    "sim", "--secure", "--transport", "http", "--dataset", "digits", "--model", "digits_mlp",
    "--clients", "6", "--per-round", "4", "--rounds", "2", "--local-epochs", "1", "--seed",
    "3", "--no-progress",
]  # fmt: skip


@pytest.fixture
def relays(monkeypatch: pytest.MonkeyPatch) -> list[ByteRelay]:
    """Every loopback coordinator a fleet starts is reached through a byte-counting relay (the
    devices, the observer and the admin client alike); the relays, as started."""
    made: list[ByteRelay] = []
    real = coordinator.service.ServerThread

    class Relayed:
        def __init__(self, config: Any) -> None:
            self.inner = real(config)

        def start(self) -> str:
            relay = ByteRelay(self.inner.start())
            made.append(relay)
            return relay.__enter__()

        def stop(self) -> None:
            self.inner.stop()
            made[-1].stop()

    monkeypatch.setattr(coordinator.service, "ServerThread", Relayed)
    return made


def _relayed_devices(relay: ByteRelay) -> tuple[dict[str, dict[str, int]], set[str]]:
    """What the relay carried for the devices (the senders of check-ins: the observer only
    registers and fetches models, the admin client signs as no device): `control`, the
    exchanges whose answer names no ledger round, and `rounds`, those that name one; and the
    devices' ids."""
    deadline = time.monotonic() + 10
    while not relay.idle() and time.monotonic() < deadline:
        time.sleep(0.05)
    per_device: dict[str, list[tuple[bool, int, int, str]]] = {}
    for up, down in relay.connections():
        for ex in exchanges(up, down):
            device = ex.request.header("x-plume-device")
            assert ex.response is not None, ex.request.start  # every request was answered
            if device is None:
                continue
            in_round = ex.response.header("x-plume-ledger-round") is not None
            path = ex.request.start.split(" ")[1].split("?")[0]
            per_device.setdefault(device, []).append((in_round, ex.up, ex.down, path))
    out = {part: dict.fromkeys(KEYS, 0) for part in ("control", "rounds")}
    devices = {
        d: rows for d, rows in per_device.items() if any(p == Route.CHECK_IN for *_, p in rows)
    }
    for rows in devices.values():
        for in_round, up, down, _ in rows:
            cell = out["rounds" if in_round else "control"]
            cell["up_wire_bytes"] += up
            cell["down_wire_bytes"] += down
            cell["requests"] += 1
    return out, set(devices)


@pytest.mark.timeout(240)
def test_a_secure_http_runs_control_traffic_is_what_the_relay_carried_outside_the_rounds(
    relays: list[ByteRelay],
) -> None:
    # Execute: a secure run over HTTP, its coordinator behind the relay
    result = run_secure_simulation(
        CFG, SecureConfig(coord_fraction=0.5), dropout=0.0, progress=False, transport="http"
    )

    # Assert: every round records the devices' control traffic, and over the run it is
    # exactly the relayed bytes and requests of their exchanges that no round's ledger holds
    [relay] = relays
    seen, devices = _relayed_devices(relay)
    assert [r.round for r in result.records] == [1, 2]
    cells = [r.measurements["control_traffic"] for r in result.records]
    assert all(set(c) == set(KEYS) for c in cells)
    assert {k: sum(c[k] for c in cells) for k in KEYS} == seen["control"]
    # round 1 holds the registrations of its 4 devices at least
    assert cells[0]["requests"] >= CFG.per_round
    # every device that took part is counted (and no one else: the observer never checks in)
    assert devices == {row.device_id for row in result.ledger.rows()}
    # the rest of what the devices sent is the rounds' ledger (ledger.csv)
    totals = result.ledger.totals()
    assert seen["rounds"]["up_wire_bytes"] == totals["up"]["wire_bytes"]
    assert seen["rounds"]["down_wire_bytes"] == totals["down"]["wire_bytes"]


@pytest.mark.timeout(240)
def test_plume_sim_secure_http_gives_the_control_traffic_in_its_files_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    assert plume([*SECURE_TINY, "--out", str(tmp_path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("secure: final"))

    # Assert: the summary's totals, the CSV's columns and the summary line agree with the rounds
    doc = json.loads((tmp_path / "rounds.json").read_text())
    cells = [r["measurements"]["control_traffic"] for r in doc["rounds"]]
    up, down, n = (sum(c[k] for c in cells) for k in KEYS)
    assert n >= CFG.per_round and up > 0 and down > 0
    summary = doc["summary"]
    assert [summary[f"total_control_{k}"] for k in KEYS] == [up, down, n]
    said = (
        f"control traffic outside the rounds {up:,} B up, {down:,} B down in {n:,} requests "
        "(registrations, idle check-ins)"  # a secure device makes no outcome check-in
    )
    assert f"; {said}" in line
    header = (tmp_path / "rounds.csv").read_text().splitlines()[0].split(",")
    assert header[-3:] == ["control_up_wire_bytes", "control_down_wire_bytes", "control_requests"]
    # ... and `plume sim report` prints the line again from the rounds
    assert plume(["sim", "report", str(tmp_path)]) == 0
    assert f"secure: {said}" in capsys.readouterr().out.splitlines()
