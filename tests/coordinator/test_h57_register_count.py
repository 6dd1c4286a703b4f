"""`plume_registered_devices` is kept by each registration that creates a device, not by a
COUNT(*) over the devices table per registration. That scan grows with the table and runs on
the event loop (measured ad hoc on the 2-core dev VM, 2026-11-29: about 3 ms at 200,000 devices,
some 50 times the registration's own insert), so a fleet registering in a burst stalled every
other request in proportion to the fleet's size."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.store import Store
from sdk.client import Client

from .test_service_support import ADMIN


def _gauge(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("plume_registered_devices "):
            return float(line.split()[1])
    raise AssertionError("no plume_registered_devices in /metrics")


def test_registrations_keep_the_device_gauge_without_counting_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: two devices already in the database
    db = tmp_path / "p.db"
    store = Store(db)
    store.register_device("0" * 32, b"\x01" * 32, 0.0)
    store.register_device("1" * 32, b"\x02" * 32, 0.0)
    store.close()
    counts: list[int] = []
    real = Store.count_devices

    def counting(self: Store) -> int:
        counts.append(1)
        return real(self)

    monkeypatch.setattr(Store, "count_devices", counting)
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url:
        with httpx.Client(base_url=url) as http:
            assert _gauge(http) == 2  # counted once, on start
            at_start = len(counts)
            # Execute: three new devices, one registering twice
            for i in range(3):
                with Client(url, app_dir=tmp_path / f"dev{i}") as client:
                    client.register()
                    if i == 0:
                        client.register()  # already registered: not a new device
            # Assert
            assert _gauge(http) == 5
            assert len(counts) == at_start  # no table scan per registration
