"""The bandwidth ledger: every byte of every round, by device and direction."""

from __future__ import annotations

import csv
import io
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["LedgerRow", "BandwidthLedger", "Direction"]

Direction = Literal["up", "down"]


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One transfer. `payload_bytes`: the encoded message; `wire_bytes`: what crossed the network
    (equal to the payload in-process; HTTP adds request/status lines and headers);
    `dense_bytes`: the same message as dense fp32, the baseline every ratio is against."""

    round_id: int
    device_id: str
    direction: Direction
    payload_bytes: int
    wire_bytes: int
    dense_bytes: int


class BandwidthLedger:
    """An append-only, thread-safe record of transfers with per-round totals.

    `keep=False` makes and checks each row but keeps none (the coordinator service's engines:
    its ledger is in SQLite, and one kept here would grow by a row per accepted upload for the
    process's life, read by nobody)."""

    def __init__(self, rows: Iterable[LedgerRow] = (), *, keep: bool = True) -> None:
        self._rows: list[LedgerRow] = list(rows)
        self._lock = threading.Lock()
        self.keep = keep

    def record(
        self,
        round_id: int,
        device_id: str,
        direction: Direction,
        payload_bytes: int,
        wire_bytes: int | None = None,
        dense_bytes: int = 0,
    ) -> LedgerRow:
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
        if payload_bytes < 0 or dense_bytes < 0 or (wire_bytes is not None and wire_bytes < 0):
            raise ValueError("byte counts cannot be negative")
        row = LedgerRow(
            round_id,
            device_id,
            direction,
            int(payload_bytes),
            int(payload_bytes if wire_bytes is None else wire_bytes),
            int(dense_bytes),
        )
        if self.keep:
            with self._lock:
                self._rows.append(row)
        return row

    def rows(self, round_id: int | None = None) -> list[LedgerRow]:
        with self._lock:
            return [r for r in self._rows if round_id is None or r.round_id == round_id]

    def round_totals(self, round_id: int) -> dict[str, Any]:
        """Totals for one round: bytes up/down (payload, wire, dense) and ratios vs dense."""
        return _totals(self.rows(round_id))

    def totals(self) -> dict[str, Any]:
        return _totals(self.rows())

    def by_round(self) -> dict[int, dict[str, Any]]:
        groups: dict[int, list[LedgerRow]] = defaultdict(list)
        for r in self.rows():
            groups[r.round_id].append(r)
        return {rid: _totals(rs) for rid, rs in sorted(groups.items())}

    def to_csv(self, round_id: int | None = None) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(
            ["round_id", "device_id", "direction", "payload_bytes", "wire_bytes", "dense_bytes"]
        )
        for r in self.rows(round_id):
            writer.writerow(
                [r.round_id, r.device_id, r.direction, r.payload_bytes, r.wire_bytes, r.dense_bytes]
            )
        return buf.getvalue()

    def to_json(self, round_id: int | None = None) -> dict[str, Any]:
        rows = self.rows(round_id)
        return {"totals": _totals(rows), "rows": [asdict(r) for r in rows]}


def _totals(rows: list[LedgerRow]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in ("up", "down"):
        sel = [r for r in rows if r.direction == d]
        payload = sum(r.payload_bytes for r in sel)
        wire = sum(r.wire_bytes for r in sel)
        dense = sum(r.dense_bytes for r in sel)
        out[d] = {
            "transfers": len(sel),
            "payload_bytes": payload,
            "wire_bytes": wire,
            "dense_bytes": dense,
            "ratio_vs_dense": (dense / payload) if payload else None,
        }
    return out
