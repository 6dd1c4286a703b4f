"""Backdoor defence: drop reports that collude with other devices on rarely sent coordinates.

`CollusionFilter` keeps, per device, the running sum of its past (sparse) reports. Each round it
scores every report by its highest cosine similarity to another device's history, with every
coordinate weighted by its inverse device frequency, w_j = log((1 + M) / (1 + df_j)) (M tracked
devices, df_j of them have sent coordinate j). A report whose score exceeds `threshold` is
dropped, and its device stays suspect for `memory` rounds; the kept reports go to `inner`.

Why this catches an unboosted data-poisoning backdoor under top-k compression (see
docs/robustness.md): honest top-k reports are sparse and nearly orthogonal, and their mass sits
on coordinates many devices send (small w_j). A trigger lives in coordinates clean training
leaves alone (dormant input weights, Liu et al. 2018), so every backdoored report spends part of
its budget on the same few coordinates, which only the attackers send (large w_j). Weighted by
w, two attackers look alike even when they never share a round, while their plain norms and
cosines stay inside the honest range. The idea is FoolsGold's (Fung et al. 2020: sybils that
share an objective have similar update histories), made to work on sparse updates by the
inverse-frequency weights and a hard threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from compression import SparseUpdate

from ._base import (
    AggregateOutput,
    AggregationProcess,
    AggregatorFactory,
    ClientUpdate,
    check_finite_reports,
    saturate_f32,
    shown,
)
from ._mean import FedAvg
from ._robust import UpdateRows, _whole, forward_rows

__all__ = [
    "CollusionFilter",
    "CollusionState",
    "DeviceHistory",
    "HISTORY_CHUNK",
    "MAX_HISTORY_VALUES",
    "collusion_scores",
]

F64 = npt.NDArray[np.float64]

# History values concatenated at once when scoring (about 48 bytes each): 3 MiB.
HISTORY_CHUNK = 1 << 16
# Largest history_values·max_devices a CollusionFilter builds with: 2^25 values, about 400 MB
# in the persisted state (12 bytes each), four times the defaults (8,192 x 1,000). Without a
# cap a spec could let the histories grow past the state codec's 2 GiB (MAX_STATE_BYTES),
# after which every round's publish failed.
MAX_HISTORY_VALUES = 1 << 25


@dataclass(frozen=True, slots=True)
class DeviceHistory:
    """One device's summed past reports: sorted int64 indices, float32 values; last round seen."""

    indices: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]
    last_round: int


@dataclass(frozen=True, slots=True)
class CollusionState:
    """The filter's state: round counter, histories, device frequency int32[d], suspects.

    `suspects` maps a device to the last round (inclusive) its reports are dropped.
    """

    round: int
    histories: dict[str, DeviceHistory]
    device_freq: npt.NDArray[np.int32]
    suspects: dict[str, int]
    inner: Any


def _add_sparse(hist: DeviceHistory | None, upd: SparseUpdate, cap: int, rnd: int) -> DeviceHistory:
    """hist + upd over the union of supports, keeping the `cap` largest magnitudes."""
    if hist is None:
        idx, vals = upd.indices.astype(np.int64), upd.values.astype(np.float32)
    else:
        both = np.concatenate([hist.indices, upd.indices.astype(np.int64)])
        idx, inv = np.unique(both, return_inverse=True)
        acc = np.zeros(idx.shape[0], dtype=np.float64)
        np.add.at(acc, inv, np.concatenate([hist.values, upd.values]).astype(np.float64))
        # A sum of finite float32 values can pass float32's largest value (a device sending
        # 3e38 twice); saturate instead of storing inf, whose products with the scratch's
        # zeros are NaN and would void the scores of every history in its chunk.
        vals = saturate_f32(acc)
    if idx.shape[0] > cap:
        top = np.sort(np.argpartition(-np.abs(vals), cap - 1)[:cap])
        idx, vals = idx[top], vals[top]
    nz = vals != 0
    return DeviceHistory(idx[nz], vals[nz], rnd)


def collusion_scores(
    reports: Sequence[tuple[str, SparseUpdate]],
    histories: dict[str, DeviceHistory],
    weights: F64,
    chunk_values: int = HISTORY_CHUNK,
) -> F64:
    """float64[n]: for each (device, report), the highest weighted cosine to another device's
    history, sum_j w_j² a_j h_j / (||w∘a|| ||w∘h||); -1 if there is no other history.

    weights: float64[d]. Histories are taken in chunks of about `chunk_values` values, so the
    memory is one float64[d] scratch plus about 48 bytes per chunk value; time
    O(n · total history values).
    """
    names = list(histories)
    n = len(reports)
    best = np.full(n, -np.inf)
    if n == 0:
        return np.full(0, -1.0)
    weighted = [(weights[u.indices], u) for _, u in reports]
    a_norms = [float(np.sqrt(np.sum((w * u.values.astype(np.float64)) ** 2))) for w, u in weighted]
    scratch = np.zeros(weights.shape[0], dtype=np.float64)
    start = 0
    while start < len(names):
        stop, total = start, 0
        while stop < len(names) and (stop == start or total < chunk_values):
            total += histories[names[stop]].indices.shape[0]
            stop += 1
        chunk = names[start:stop]
        counts = np.array([histories[k].indices.shape[0] for k in chunk], dtype=np.int64)
        idx = np.concatenate([histories[k].indices for k in chunk])
        vals = np.concatenate([histories[k].values for k in chunk]).astype(np.float64)
        row_of = np.repeat(np.arange(len(chunk), dtype=np.int64), counts)
        wv = weights[idx] * vals
        h_norm = np.sqrt(np.bincount(row_of, weights=wv * wv, minlength=len(chunk)))
        for i, ((device, _), (w_i, upd)) in enumerate(zip(reports, weighted, strict=True)):
            if a_norms[i] == 0.0:
                continue
            scratch[upd.indices] = w_i * w_i * upd.values
            dots = np.bincount(row_of, weights=scratch[idx] * vals, minlength=len(chunk))
            scratch[upd.indices] = 0.0
            cos = dots / np.maximum(a_norms[i] * h_norm, 1e-30)
            if device in chunk:
                cos[chunk.index(device)] = -np.inf
            if cos.size:
                best[i] = max(best[i], float(cos.max()))
        start = stop
    out: F64 = np.where(np.isfinite(best), best, -1.0)
    return out


@dataclass(frozen=True, slots=True)
class CollusionFilter:
    """Drop reports whose inverse-frequency-weighted cosine to another device's history is high.

    threshold: a report with score > threshold is dropped (score in [-1, 1], see
    `collusion_scores`). memory: rounds a dropped device's later reports are dropped too
    (0: only the flagged report). history_values: values kept per device history (the largest
    magnitudes). max_devices: histories kept (least recently seen evicted; never the current
    round's, so a round with more reports than max_devices keeps one history per report), and
    suspects kept (those whose sentence ends first released early; never the current round's
    flagged). history_values·max_devices is at most MAX_HISTORY_VALUES.
    Memory: at most 32·d + 64·V bytes beyond the inputs, never n×d (d = size; V = stored
    history values, at most history_values·max(max_devices, n), 12 bytes each in the state;
    scoring takes the histories in chunks of HISTORY_CHUNK values), plus the inner aggregator's
    bound.
    """

    inner: AggregatorFactory = field(default_factory=FedAvg)
    threshold: float = 0.3
    memory: int = 30
    history_values: int = 8192
    max_devices: int = 1000

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold < 1.0:
            raise ValueError(f"collusion threshold must be in [-1, 1), got {shown(self.threshold)}")
        whole = all(_whole(v) for v in (self.memory, self.history_values, self.max_devices))
        if not whole or self.memory < 0 or self.history_values < 1 or self.max_devices < 2:
            raise ValueError(
                "need whole numbers memory >= 0, history_values >= 1 and max_devices >= 2"
            )
        if self.history_values * self.max_devices > MAX_HISTORY_VALUES:
            raise ValueError(
                f"history_values·max_devices ({shown(self.history_values)}·{shown(self.max_devices)}) must be "
                f"at most {MAX_HISTORY_VALUES}: the histories are kept in memory and in the "
                "persisted state (12 bytes a value)"
            )

    def create(self, size: int) -> _CollusionProcess:
        return _CollusionProcess(size, self, self.inner.create(size))


class _CollusionProcess:
    def __init__(self, size: int, cfg: CollusionFilter, inner: AggregationProcess) -> None:
        self.size, self.cfg, self.inner = size, cfg, inner

    def initialize(self) -> CollusionState:
        return CollusionState(
            0, {}, np.zeros(self.size, dtype=np.int32), {}, self.inner.initialize()
        )

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput:
        for cu in updates:
            if cu.update.size != self.size:
                raise ValueError(f"update from {cu.device_id} has size {cu.update.size}")
        # Before the histories: a NaN remembered there would poison every later score.
        check_finite_reports(updates)
        reports = [(cu.device_id, cu.update) for cu in updates]

        def forward(inner_state: Any, keep: list[int]) -> AggregateOutput:
            out: AggregateOutput = self.inner.next(inner_state, [updates[i] for i in keep])
            return out

        return self._screen(state, reports, forward)

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        # Mixed rows (e.g. clipped) become one sparse row at a time; plain rows are used as is.
        reports = [(cu.device_id, cu.update) for cu in rows.materialize()]

        def forward(inner_state: Any, keep: list[int]) -> AggregateOutput:
            sub = rows if len(keep) == len(rows) else rows.subset(keep)
            return forward_rows(self.inner, inner_state, sub)

        return self._screen(state, reports, forward)

    def _remember(
        self, state: CollusionState, reports: list[tuple[str, SparseUpdate]], rnd: int
    ) -> tuple[dict[str, DeviceHistory], npt.NDArray[np.int32]]:
        histories = dict(state.histories)
        freq = state.device_freq.copy()
        for device, upd in reports:
            old = histories.get(device)
            new = _add_sparse(old, upd, self.cfg.history_values, rnd)
            if old is not None:
                np.subtract.at(freq, old.indices, 1)
            np.add.at(freq, new.indices, 1)
            histories[device] = new
        if len(histories) > self.cfg.max_devices:
            # Evict the least recently seen devices (never this round's).
            current = {d for d, _ in reports}
            order = sorted((h.last_round, d) for d, h in histories.items() if d not in current)
            for _, device in order[: len(histories) - self.cfg.max_devices]:
                np.subtract.at(freq, histories.pop(device).indices, 1)
        return histories, freq

    def _screen(
        self,
        state: Any,
        reports: list[tuple[str, SparseUpdate]],
        forward: Callable[[Any, list[int]], AggregateOutput],
    ) -> AggregateOutput:
        if not isinstance(state, CollusionState):
            raise TypeError("collusion filter state must be a CollusionState")
        rnd = state.round + 1
        histories, freq = self._remember(state, reports, rnd)
        m = len(histories)
        # Inverse device frequency: coordinates every device sends weigh ~0, rare ones most.
        weights = np.log((1.0 + m) / (1.0 + freq.astype(np.float64)))
        scores = collusion_scores(reports, histories, weights)
        suspects = {d: until for d, until in state.suspects.items() if until >= rnd}
        flagged = [i for i in range(len(reports)) if scores[i] > self.cfg.threshold]
        for i in flagged:
            suspects[reports[i][0]] = rnd + self.cfg.memory
        if len(suspects) > self.cfg.max_devices:
            # A long memory would otherwise keep every device ever flagged: release the ones
            # whose sentence ends first (never this round's flagged).
            now = {reports[i][0] for i in flagged}
            order = sorted((until, d) for d, until in suspects.items() if d not in now)
            for _, device in order[: len(suspects) - max(self.cfg.max_devices, len(now))]:
                del suspects[device]
        keep = [i for i, (device, _) in enumerate(reports) if device not in suspects]
        kept = set(keep)
        dropped = {
            reports[i][0]: round(float(scores[i]), 4) for i in range(len(reports)) if i not in kept
        }
        if keep:
            inner_out = forward(state.inner, keep)
            result, inner_state, inner_meas = (
                inner_out.result,
                inner_out.state,
                inner_out.measurements,
            )
        else:
            result, inner_state, inner_meas = np.zeros(self.size, np.float32), state.inner, {}
        kept_scores = scores[keep]
        return AggregateOutput(
            CollusionState(rnd, histories, freq, suspects, inner_state),
            result,
            {
                "kept": len(keep),
                "dropped": dropped,
                "flagged": len(flagged),
                "max_kept_score": float(kept_scores.max()) if kept_scores.size else None,
                "tracked_devices": m,
                "inner": inner_meas,
            },
        )
