"""Prometheus metrics of one coordinator (its own registry, so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    """Counters served at `/metrics`. Byte counters mirror the bandwidth ledger."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "plume_http_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.bytes = Counter(
            "plume_bytes",
            "Bytes attributed to rounds, by direction (up/down) and kind (payload/wire/dense)",
            ["direction", "kind"],
            registry=r,
        )
        self.control_wire_bytes = Counter(
            "plume_control_wire_bytes",
            "HTTP wire bytes of device requests outside any round (registration, idle check-ins)",
            ["direction"],
            registry=r,
        )
        self.updates_accepted = Counter(
            "plume_updates_accepted", "Uploads accepted and committed", registry=r
        )
        self.updates_rejected = Counter(
            "plume_updates_rejected", "Uploads refused, by reason", ["reason"], registry=r
        )
        self.auth_failures = Counter(
            "plume_auth_failures", "Requests refused by authentication", ["reason"], registry=r
        )
        self.rounds = Counter("plume_rounds", "Rounds closed, by outcome", ["outcome"], registry=r)
        self.check_ins = Counter("plume_check_ins", "Check-ins by answer", ["action"], registry=r)
        self.model_version = Gauge(
            "plume_model_version", "Published model version", ["task"], registry=r
        )
        self.devices = Gauge("plume_registered_devices", "Registered devices", registry=r)
        self.upload_seconds = Histogram(
            "plume_upload_seconds",
            "Server time to accept one upload (read, verify, decode, commit)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.aggregate_seconds = Histogram(
            "plume_aggregate_seconds",
            "Time to aggregate and publish a round",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
