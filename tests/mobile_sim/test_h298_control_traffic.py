"""An HTTP run reports its devices' control traffic, and says what its wire and download
figures count (helper-296's byte-accounting review, findings 1 and 2).

Before, `plume sim --transport http` reported the coordinator's round ledgers only: each
selected device's check-in answered with its assignment, its downloads and uploads. Its other
exchanges (registration, the check-ins answered "wait" while other devices trained, the
check-in after an upload) appeared nowhere, while the summary line called `wire_up` "HTTP
requests, check-ins included" (in the README's run, 4,169 uncounted check-ins: the devices sent
about 4.8x the reported figure). Now each round's `measurements.control_traffic` holds the
fleet's exchanges in no round since the previous round was recorded, counted by the devices'
SDK (`Client.control_bandwidth`), and the summary line gives their sum beside `wire_up`.
Held here against a byte-counting TCP relay between the fleet and the coordinator.

The download ratio compared with "fp32 snapshots" while its baseline is 4 B a parameter (a
snapshot the coordinator serves is fp32 through zstd, smaller): the line now says raw fp32.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from coordinator.service import ServerThread, ServiceConfig
from mobile_sim.http_fleet import HttpFleetOptions, run_http_simulation
from mobile_sim.runner import SimConfig, SimResult
from protocol.names import Path as Route
from tests.coordinator.wire_relay import ByteRelay, exchanges

ADMIN = "h298-admin-token"
KEYS = ("up_wire_bytes", "down_wire_bytes", "requests")

# 6 digits-MLP devices, 3 a round, 3 rounds: devices not selected wait, and check in meanwhile
CFG = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=6,
    per_round=3,
    rounds=3,
    topk=0.1,
    bits=8,
    local_epochs=1,
    batch_size=16,
    partition="iid",
    fleet="off",
    seed=11,
)

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "2", "--local-epochs", "1", "--seed", "3", "--no-progress",
]  # fmt: skip


@pytest.fixture()
def relayed(tmp_path: Path) -> Iterator[tuple[ByteRelay, str]]:
    """(relay, relay url): a coordinator as the embedded one is set up (poll 0.1 s), reached
    only through a byte-counting relay (the fleet, its observer and the admin client alike)."""
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.1, tick_s=0.02
    )
    with ServerThread(cfg) as upstream:
        relay = ByteRelay(upstream)
        with relay as url:
            yield relay, url


def _relayed_fleet(relay: ByteRelay) -> dict[str, dict[str, int]]:
    """What the relay carried for the fleet's devices, the senders of check-ins (the observer
    only registers and fetches models; the admin client signs as no device): `control`, the
    exchanges whose answer names no ledger round, and `rounds`, those that name one."""
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
            path = ex.request.start.split(" ")[1]
            per_device.setdefault(device, []).append((in_round, ex.up, ex.down, path))
    out = {part: dict.fromkeys(KEYS, 0) for part in ("control", "rounds")}  # the fleet's
    fleet = [rows for rows in per_device.values() if any(p == Route.CHECK_IN for *_, p in rows)]
    assert len(fleet) == CFG.clients
    for rows in fleet:
        for in_round, up, down, _ in rows:
            cell = out["rounds" if in_round else "control"]
            cell["up_wire_bytes"] += up
            cell["down_wire_bytes"] += down
            cell["requests"] += 1
    return out


def _control(result: SimResult) -> dict[str, int]:
    cells = [r.measurements["control_traffic"] for r in result.records]
    assert all(set(c) == set(KEYS) for c in cells)
    return {k: sum(c[k] for c in cells) for k in KEYS}


@pytest.mark.timeout(180)
def test_an_http_runs_control_traffic_is_what_the_relay_carried_outside_the_rounds(
    relayed: tuple[ByteRelay, str],
) -> None:
    # Execute: the fleet against the coordinator, through the relay
    relay, url = relayed
    result = run_http_simulation(
        CFG, coordinator_url=url, progress=False, options=HttpFleetOptions(admin_token=ADMIN)
    )

    # Assert: every round records the fleet's control traffic, and over the run it is exactly
    # the relayed bytes and requests of the fleet's exchanges that no round's ledger holds
    assert [r.round for r in result.records] == [1, 2, 3]
    seen = _relayed_fleet(relay)
    control = _control(result)
    assert control == seen["control"]
    # Round 1's interval holds the registrations, one per device, and its waits
    assert result.records[0].measurements["control_traffic"]["requests"] > CFG.clients
    # Everything the devices sent is the rounds' ledger (ledger.csv, read at the end) plus it
    totals = result.ledger.totals()
    assert seen["rounds"]["up_wire_bytes"] == totals["up"]["wire_bytes"]
    assert seen["rounds"]["down_wire_bytes"] == totals["down"]["wire_bytes"]
    # ... and it is not small next to the rounds' requests (each wait is a signed request)
    assert control["up_wire_bytes"] > 0.2 * totals["up"]["wire_bytes"]


def _summary(out: str) -> str:
    return next(x for x in out.splitlines() if x.startswith("compressed: final accuracy"))


@pytest.mark.timeout(120)
def test_the_summary_line_gives_the_control_traffic_beside_the_rounds_wire_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    assert plume([*TINY, "--transport", "http", "--out", str(tmp_path)]) == 0
    line = _summary(capsys.readouterr().out)

    # Assert: rounds.json's rounds carry the control traffic, and the line gives its sums
    # next to the rounds' wire bytes, each named for what it holds
    rounds = json.loads((tmp_path / "rounds.json").read_text())["rounds"]
    cells = [r["measurements"]["control_traffic"] for r in rounds]
    up, down, n = (sum(c[k] for c in cells) for k in KEYS)
    wire = sum(r["wire_up"] for r in rounds)
    assert n >= 6 and up > 0 and down > 0
    assert f"; on the wire {wire:,} B up in the rounds (" in line
    assert (
        f"; control traffic outside the rounds {up:,} B up, {down:,} B down in {n:,} requests "
        "(registrations, idle and outcome check-ins)"
    ) in line
    assert "check-ins included" not in line


@pytest.mark.timeout(60)
def test_the_download_ratio_names_its_baseline_raw_fp32(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: in process (the baseline is the same 4 B a parameter over HTTP)
    assert plume([*TINY, "--out", str(tmp_path)]) == 0
    line = _summary(capsys.readouterr().out)

    # Assert: the ratio is against 4 B a parameter per download, and says so
    doc = json.loads((tmp_path / "rounds.json").read_text())
    params = doc["summary"]["num_params"]
    down = sum(r["bytes_down"] for r in doc["rounds"])
    dense = sum(r["dense_down"] for r in doc["rounds"])
    assert dense % (4 * params) == 0
    assert down == dense  # in process the exact model: "the same as" (test_s48_same_bytes.py)
    assert f", download {down:,} B (the same as raw fp32 models, " in line
    assert "4 B a parameter)" in line
    assert "fp32 snapshots" not in line
    # no control figure in process: nothing crosses a network
    assert "control traffic" not in line
    assert all("control_traffic" not in r["measurements"] for r in doc["rounds"])
