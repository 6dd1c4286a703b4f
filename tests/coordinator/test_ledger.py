"""The bandwidth ledger's totals, ratios and exports."""

from __future__ import annotations

import csv
import io

import pytest

from coordinator.ledger import BandwidthLedger


def test_totals_and_ratio() -> None:
    led = BandwidthLedger()
    led.record(1, "a", "up", 100, 160, 4000)
    led.record(1, "b", "up", 300, None, 4000)
    led.record(1, "a", "down", 4000, 4100, 4000)
    led.record(2, "a", "up", 50, None, 4000)
    t = led.round_totals(1)
    assert t["up"] == {
        "transfers": 2,
        "payload_bytes": 400,
        "wire_bytes": 460,
        "dense_bytes": 8000,
        "ratio_vs_dense": 20.0,
    }
    assert t["down"]["wire_bytes"] == 4100
    assert set(led.by_round()) == {1, 2}
    assert led.totals()["up"]["payload_bytes"] == 450


def test_exports_round_trip() -> None:
    led = BandwidthLedger()
    led.record(3, "dev-1", "up", 10, 20, 40)
    rows = list(csv.DictReader(io.StringIO(led.to_csv())))
    assert rows == [
        {
            "round_id": "3",
            "device_id": "dev-1",
            "direction": "up",
            "payload_bytes": "10",
            "wire_bytes": "20",
            "dense_bytes": "40",
        }
    ]
    assert led.to_json(3)["rows"][0]["payload_bytes"] == 10


def test_rejects_bad_rows() -> None:
    led = BandwidthLedger()
    with pytest.raises(ValueError):
        led.record(1, "a", "sideways", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        led.record(1, "a", "up", -1)
