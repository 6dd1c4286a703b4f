"""`plume_build_info` on /metrics: which plume, store schema and Python a scrape came from (the
coordinator said so only in its start log line), as the Prometheus convention has it: a gauge
of value 1 whose labels carry the build."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service import metrics as metrics_module
from coordinator.service.metrics import Metrics
from coordinator.service.store import SCHEMA_VERSION

from .test_service_support import ADMIN

PYTHON = ".".join(str(n) for n in sys.version_info[:3])


def test_metrics_endpoint_serves_build_info(tmp_path: Path) -> None:
    # Execute: a scrape of a real coordinator
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        text = http.get("/metrics").text

    # Assert: one gauge, one sample of value 1, its labels the build
    families = {f.name: f for f in text_string_to_metric_families(text)}
    family = families["plume_build_info"]
    assert family.type == "gauge"
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        (
            "plume_build_info",
            {"version": version("plume-fl"), "schema": str(SCHEMA_VERSION), "python": PYTHON},
            1.0,
        )
    ]
    assert "# TYPE plume_build_info gauge\n" in text


def test_a_source_tree_never_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: no installed plume-fl (as the start log line says then)
    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(metrics_module, "version", missing)

    # Execute
    samples = [s for f in Metrics().registry.collect() if f.name == "plume_build_info"
               for s in f.samples]  # fmt: skip

    # Assert
    assert [s.labels["version"] for s in samples] == ["(not installed)"]
