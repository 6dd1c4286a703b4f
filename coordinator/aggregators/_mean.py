"""FedAvg: the example-weighted mean of decoded (sparse) updates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from compression import SparseUpdate
from compression._config import MAX_WEIGHT

from ._base import (
    AggregateOutput,
    ClientUpdate,
    NonFiniteReportError,
    check_finite_reports,
    finite_number,
    shown,
    sparse_weighted_sum,
)

if TYPE_CHECKING:
    from ._robust import UpdateRows

__all__ = ["FedAvg"]


@dataclass(frozen=True, slots=True)
class FedAvg:
    """Weighted mean, sum_i w_i u_i / sum_i w_i, accumulated sparsely in float64.

    Memory: one float64[d] accumulator and `sparse_weighted_sum`'s chunk buffers (about 1.5 MB),
    whatever the number of clients, besides the float32[d] result. Behind a pre-aggregator
    (`nnm`, `bucket`, `normbound`, `cosfilter`) it sums the lazily mixed rows one at a time
    (`next_rows`), bit for bit as it sums the same rows materialised.
    `uniform=True` ignores example counts (every device weighs 1).
    `max_weight` caps each declared example count: devices report their own counts, so
    without a cap (or `uniform`) one device declaring 2^53 examples sets the mean alone. With a
    cap W, no device weighs more than W; honest devices holding more than W examples are
    capped too (the cap trades some statistical weight for a bound on anyone's influence).
    A declared count above 2^53 (`MAX_WEIGHT`, the most a frame's weight field may carry) is
    refused with a ValueError naming it, capped or not, behind a pre-aggregator too
    (`check_claims`): two weights of 1e308 summed to infinity and the round's mean came out
    NaN. A row that mixes n reports (a bucket of `bucket`) may weigh up to n·2^53, their most
    in sum (`weight_limit`).
    """

    uniform: bool = False
    max_weight: float | None = None

    def __post_init__(self) -> None:
        if self.max_weight is not None and not (
            finite_number(self.max_weight) and self.max_weight > 0
        ):
            raise ValueError(
                f"max_weight must be a positive finite number, got {shown(self.max_weight)}"
            )

    def create(self, size: int) -> _FedAvgProcess:
        return _FedAvgProcess(size, self.uniform, self.max_weight)


# Below this weight FedAvg sums in float64: a float32 product w · v under 2^-126 (float32's
# smallest normal) loses digits and one under 2^-149 is 0, so two reports of weight 1e-50
# averaged to 0 and a dp stage with max_weight 1e-50 released its noise alone (helper-333).
# From 2^-24 on, only values under 2^-102 (about 2e-31) can underflow so. Every committed
# result has weights of 1 or more and keeps its float32 products, bit for bit.
WIDE_BELOW = 2.0**-24


def weight_limit(rows: UpdateRows) -> float:
    """The largest weight a row of `rows` may carry: 2^53 (`MAX_WEIGHT`) when the rows are the
    reports themselves, n·2^53 when they mix n reports (a bucket weighs its reports' sum)."""
    return MAX_WEIGHT if rows.mix is None else MAX_WEIGHT * rows.mix.shape[1]


def weight_error(weight: object, device: str, limit: float = MAX_WEIGHT) -> str:
    """The message refusing `weight` (from `device`) above `limit` (`weight_limit`)."""
    n = limit / MAX_WEIGHT
    most = "2^53" if n == 1 else f"{n:g}·2^53 (the most {n:g} reports weigh in sum)"
    return (
        f"weight {weight!r} from {device} is above {most} (the largest "
        f"example count a report may declare): such weights can sum past float64's range and "
        f"make the mean NaN"
    )


def check_claims(rows: UpdateRows) -> None:
    """Refuse a declared count above 2^53 among the reports `rows` were made of, by name.

    Lazily mixed rows (`nnm`, `normbound`, `cosfilter`, `bucket`) carry weights of their own,
    so the reports' are checked here, as `next` checks them: a count FedAvg refuses alone is
    refused behind any of those stages too.
    """
    claims = rows.claims()
    if claims is not None:
        names, weights = claims
        for i in np.flatnonzero(weights > MAX_WEIGHT):
            raise ValueError(weight_error(float(weights[i]), names[i]))


def needs_float64(weights: Iterable[float]) -> bool:
    """Whether a weighted sum with these weights is summed in float64 (`WIDE_BELOW`)."""
    return any(0.0 < w < WIDE_BELOW for w in weights)


def add_float64(acc: npt.NDArray[np.float64], update: SparseUpdate, w: float) -> None:
    """`update.add_to(acc, w)` with the product w · values taken in float64, not float32."""
    acc[update.indices] += w * update.values.astype(np.float64)


class _FedAvgProcess:
    def __init__(self, size: int, uniform: bool, max_weight: float | None = None) -> None:
        self.size = size
        self.uniform = uniform
        self.max_weight = max_weight

    def initialize(self) -> Any:
        return ()

    def _weights(
        self, claimed: Iterable[tuple[str, float]], limit: float = MAX_WEIGHT
    ) -> tuple[list[float], float, int]:
        """(weights, their sum, how many were capped) from (device, claimed count) pairs.

        A claimed count above `limit` (2^53 for a report, `weight_limit` for mixed rows) is
        refused: with every weight at most n·2^53 their float64 sum stays finite.
        """
        total = 0.0
        weights = []
        capped = 0
        for device, weight in claimed:
            w = 1.0 if self.uniform else float(weight)
            if not np.isfinite(w) or w < 0:
                raise ValueError(f"invalid weight {weight!r} from {device}")
            if w > limit:
                raise ValueError(weight_error(weight, device, limit))
            if self.max_weight is not None and w > self.max_weight:
                w = self.max_weight
                capped += 1
            weights.append(w)
            total += w
        return weights, total, capped

    def _finish(
        self, state: Any, acc: npt.NDArray[np.float64], total: float, clients: int, capped: int
    ) -> AggregateOutput:
        if total > 0:
            # (acc / total).astype(float32) without its float64[d] quotient: numpy divides in
            # float64 (the float64 loop) and rounds each quotient to float32 on the way out.
            result = np.divide(acc, total, out=np.empty(acc.shape, np.float32), casting="unsafe")
        else:
            result = acc.astype(np.float32)
        measurements: dict[str, Any] = {"clients": clients, "total_weight": total}
        if self.max_weight is not None:
            measurements["weights_capped"] = capped
        return AggregateOutput(state, result, measurements)

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput:
        return self.next_sum(state, updates)[0]

    def next_sum(
        self, state: Any, updates: Sequence[ClientUpdate]
    ) -> tuple[AggregateOutput, npt.NDArray[np.float64]]:
        """`next`'s output and the weighted sum sum_i w_i u_i it divides, in float64 (its
        float32 mean times n is off by up to n float32 roundings: `DPMean` noises this)."""
        for cu in updates:
            if cu.update.size != self.size:
                raise ValueError(f"update of size {cu.update.size}, expected {self.size}")
        weights, total, capped = self._weights((cu.device_id, cu.weight) for cu in updates)
        # Chunked np.add.at over the rows (bit-identical to the add_to loop below, which stays
        # for updates it does not cover), its temporaries bounded whatever the number of rows.
        acc = None  # stays None for a tiny weight (`needs_float64`)
        if not needs_float64(weights):
            with np.errstate(over="ignore"):
                acc = sparse_weighted_sum([cu.update for cu in updates], weights, self.size)
                if acc is None:
                    acc = np.zeros(self.size, dtype=np.float64)
                    for cu, w in zip(updates, weights, strict=True):
                        cu.update.add_to(acc, w)
        if acc is None or not np.all(np.isfinite(acc)):
            # The products w · value are float32 (kept: they fix every committed result's
            # bits), and a finite value times a large example count can overflow there, e.g.
            # 1e37 from a device declaring 100 examples. The inputs are finite, so only such an
            # overflow makes acc non-finite: redo the round in float64, where the mean of
            # finite float32 values always fits float32 again. A tiny weight sums in float64
            # from the start (`needs_float64`: its products would underflow).
            acc = np.zeros(self.size, dtype=np.float64)
            for cu, w in zip(updates, weights, strict=True):
                add_float64(acc, cu.update, w)
            if not np.all(np.isfinite(acc)):
                # Not an overflow: every weight is at most 2^53 (refused above otherwise) and
                # every finite float32 value at most 3.4e38, so each product is below 3.1e54
                # and float64 (to 1.8e308) holds the sum of any number of them that fits in
                # memory. (Not any weights: two of 1e308 summed to inf, and the mean was NaN.)
                # So a report holds NaN or infinity. The service's decoders refuse those; a
                # library caller gets the error the robust rules raise, not an inf mean (which
                # a server optimizer behind would have saturated to a finite 3.4e38).
                check_finite_reports(updates)
        return self._finish(state, acc, total, len(updates), capped), acc

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        """The mean of lazily mixed rows, summed one dense row at a time.

        Bit for bit `next(state, rows.materialize())`: each row is rounded to float32 as
        `materialize` rounds it, and w · row (float32) is added to the float64 accumulator in
        the same row order as `next`'s sum adds it (a coordinate a row does not hold adds
        0). Memory: the accumulator, one row in float64 and float32 and its product, instead of
        the n materialised rows (up to min(d, total nnz) values each) and their concatenation.
        """
        if rows.size != self.size:
            raise ValueError(f"rows of size {rows.size}, expected {self.size}")
        if rows.mix is None:
            # The rows are the decoded updates themselves: nothing is copied.
            return self.next(state, rows.materialize())
        if not self.uniform:
            check_claims(rows)
        weights, total, capped = self._weights(
            zip(rows.labels, rows.weights.tolist(), strict=True), weight_limit(rows)
        )
        acc = np.zeros(self.size, dtype=np.float64)
        if not (wide := needs_float64(weights)):
            # inf + -inf (two overflowed products) is NaN: caught below, as in `next`.
            with np.errstate(over="ignore", invalid="ignore"):
                for w, dense in zip(weights, rows.dense_rows(), strict=True):
                    acc += w * dense
        if wide or not np.all(np.isfinite(acc)):
            # As in `next`: a float32 product overflowed, or a tiny weight's would underflow;
            # the sum in float64.
            acc = np.zeros(self.size, dtype=np.float64)
            for w, dense in zip(weights, rows.dense_rows(), strict=True):
                acc += w * dense.astype(np.float64)
            # As in `next_sum`: weights of at most n·2^53 (`weight_limit`) times float32
            # values cannot overflow float64, so a row holds NaN or infinity.
            if not np.all(np.isfinite(acc)):
                raise NonFiniteReportError("a report holds NaN or infinity")
        return self._finish(state, acc, total, len(rows), capped)
