"""Labelled counters have their known series at 0 from the start (s25/ops finding 4).

Before: `plume_rounds_total`, `plume_auth_failures_total`, `plume_check_ins_total` and
`plume_bytes_total` had no sample until their first event, so that event appeared as a series
already at 1: `increase(plume_rounds_total{outcome="abandoned"}[1h]) > 0` did not fire for the
first abandoned round after each start. A fresh coordinator's `/metrics` on loopback.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.service import ServerThread, ServiceConfig

from .test_service_support import ADMIN

EXPECTED: dict[str, list[dict[str, str]]] = {
    "plume_rounds_total": [{"outcome": o} for o in ("committed", "abandoned")],
    "plume_auth_failures_total": [
        {"reason": r}
        for r in (
            "unsigned",
            "unregistered",
            "bad_signature",
            "stale_timestamp",
            "replayed_nonce",
            "round_mismatch",
            "bad_admin_token",
        )
    ],
    "plume_check_ins_total": [{"action": a} for a in ("train", "wait", "end")],
    "plume_bytes_total": [
        {"direction": d, "kind": k} for d in ("up", "down") for k in ("payload", "wire", "dense")
    ],
    "plume_store_errors_total": [{}],
}


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    db: Path = tmp_path_factory.mktemp("h266") / "plume.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url:
        text = httpx.get(f"{url}/metrics").text
    samples: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[repr(sorted(s.labels.items()))] = s.value
    return samples


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_fresh_coordinator_has_each_known_series_at_zero(
    scrape: dict[str, dict[str, float]], name: str
) -> None:
    # Assert: every known label value's series is there, at 0, before any event
    got = scrape.get(name, {})
    for labels in EXPECTED[name]:
        key = repr(sorted(labels.items()))
        assert got.get(key) == 0.0, (name, labels, got)
