"""Byzantine-robust aggregators and pre-aggregators over decoded sparse updates, never n×d dense.

Everything here works on `UpdateRows`, a lazy n'×d matrix y_i = sum_j W[i, j] u_j over n
decoded sparse updates. Robust aggregators and pre-aggregators (bucketing, nearest-neighbour
mixing, clipping) work on this view so that no n×d dense matrix is ever built: rows are only touched through Gram
entries, dot products with one dense d-vector, linear combinations, and coordinate blocks of a
bounded number of scalars.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from compression import SparseUpdate

from ._base import (
    AggregateOutput,
    AggregationProcess,
    AggregatorFactory,
    ClientUpdate,
    NonFiniteReportError,
    finite_number,
    shown,
    stages,
)
from ._mean import FedAvg, check_claims

__all__ = [
    "DEFAULT_BLOCK_ELEMS",
    "MAX_CCLIP_ITERATIONS",
    "MAX_GEOMED_ITERATIONS",
    "Bucketing",
    "CenteredClipping",
    "CoordinateMedian",
    "GeometricMedian",
    "Krum",
    "MomentumCosineFilter",
    "NearestNeighborMixing",
    "RobustLearningRate",
    "RowAggregationProcess",
    "TrimmedMean",
    "UpdateRows",
    "cohort_refusal",
    "forward_rows",
    "krum_scores",
    "resolve_f",
]

# A summed row whose reports' spread sum_k |c_k| ||u_k|| exceeds this times its own norm has
# its dot products with dense vectors taken on the row itself (`UpdateRows._wide`).
WIDE_SPREAD = 1e6

# Scalars per coordinate block (n' rows × c columns): 2**20 float32 = 4 MiB per block copy.
DEFAULT_BLOCK_ELEMS = 1 << 20

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]


class UpdateRows:
    """n' virtual rows over n base sparse updates of size d (all dense maths in float64).

    `mix` is None (the rows are the base updates) or float64[n', n]. `weights` float64[n'] are
    the rows' FedAvg weights (example counts), `labels` their names in measurements.
    A base update holding NaN or infinity raises NonFiniteReportError here, before any maths.
    Memory: the base updates as given, their concatenation (12 bytes per stored value), a
    float64[n, n] Gram matrix once one is asked for, and one float64[d] scratch vector; rows
    that sum two or more updates are measured one dense float64[d] row at a time (`gram`).
    """

    def __init__(
        self,
        updates: Sequence[SparseUpdate],
        size: int,
        *,
        weights: npt.ArrayLike | None = None,
        labels: Sequence[str] | None = None,
        mix: F64 | None = None,
        _shared: _Base | None = None,
    ) -> None:
        if _shared is not None:
            self._base = _shared
        else:
            # Base updates have names only when the rows are the base updates themselves.
            self._base = _Base(updates, size, labels if mix is None else None)
        n = self._base.n
        if mix is not None:
            mix = np.asarray(mix, dtype=np.float64)
            if mix.ndim != 2 or mix.shape[1] != n:
                raise ValueError(f"mix must be float64[n', {n}], got shape {mix.shape}")
        self.mix = mix
        rows = n if mix is None else int(mix.shape[0])
        w = np.ones(rows) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (rows,):
            raise ValueError(f"need {rows} weights, got shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and non-negative")
        self.weights = w
        self.labels = list(labels) if labels is not None else [f"row-{i}" for i in range(rows)]
        if len(self.labels) != rows:
            raise ValueError(f"need {rows} labels, got {len(self.labels)}")
        if _shared is None and mix is None:
            # The rows are the reports: every row mixed from them shares their claims.
            self._base.claims = (self.labels, w)
        self._measured_sq: F64 | None = None
        # Computed on first use (`sq_norms`, `gram`): see `_summed`.
        self._sq: F64 | None = None
        self._gram: F64 | None = None
        # Summed rows whose dots go through the row itself (`_wide`), and their cached
        # nonzeros (`_wide_row`).
        self._wide_pos: list[int] | None = None
        self._wide_cache: dict[int, tuple[npt.NDArray[np.int64], F64]] = {}
        self._wide_cached = 0

    @classmethod
    def from_client_updates(cls, updates: Sequence[ClientUpdate], size: int) -> UpdateRows:
        for cu in updates:
            if cu.update.size != size:
                raise ValueError(
                    f"update from {cu.device_id} has size {cu.update.size}, expected {size}"
                )
        return cls(
            [cu.update for cu in updates],
            size,
            weights=[cu.weight for cu in updates],
            labels=[cu.device_id for cu in updates],
        )

    @property
    def size(self) -> int:
        """d, the length of every row."""
        return self._base.size

    def claims(self) -> tuple[list[str], F64] | None:
        """The base reports' names and declared weights (example counts), shared by every row
        mixed from them, or None for rows built from a mix directly."""
        return self._base.claims

    def __len__(self) -> int:
        return len(self.labels)

    def mixed(
        self, mix: F64, *, weights: npt.ArrayLike | None = None, labels: Sequence[str] | None = None
    ) -> UpdateRows:
        """New rows `mix @ self` (mix float64[n'', n']), sharing the base updates and Gram."""
        mix = np.asarray(mix, dtype=np.float64)
        if mix.ndim != 2 or mix.shape[1] != len(self):
            raise ValueError(f"mix must have {len(self)} columns, got shape {mix.shape}")
        total = mix if self.mix is None else mix @ self.mix
        return UpdateRows(
            [], self.size, weights=weights, labels=labels, mix=total, _shared=self._base
        )

    def scaled(self, scale: F64) -> UpdateRows:
        """Rows multiplied by float64[n'] factors (clipping), keeping weights and labels."""
        return self.mixed(
            np.diag(np.asarray(scale, dtype=np.float64)), weights=self.weights, labels=self.labels
        )

    def subset(self, keep: Sequence[int]) -> UpdateRows:
        """Only the rows at positions `keep` (with their measured squared norms, if given)."""
        k = np.asarray(keep, dtype=np.int64)
        sel = np.zeros((k.shape[0], len(self)))
        sel[np.arange(k.shape[0]), k] = 1.0
        out = self.mixed(sel, weights=self.weights[k], labels=[self.labels[i] for i in k])
        if self._measured_sq is not None:
            out = out.with_sq_norms(self._measured_sq[k])
        elif self._sq is not None:
            out._sq = self._sq[k]
        return out

    def with_sq_norms(self, sq: npt.ArrayLike) -> UpdateRows:
        """The same rows, whose `sq_norms()` is float64[n'] `sq` as a caller measured them.

        A mixed row's squared norm from the Gram matrix, sum_jk c_j c_k <x_j, x_k>, is the
        difference of huge numbers when its reports nearly cancel (a report and its near
        negation in one bucket) and can lose every digit. A consumer that measured the rows
        themselves (the anomaly screen, one dense row at a time) hands its values on here, so
        that an aggregator run on these rows (the geometric median's distances
        ||z||² - 2<z, y_i> + ||y_i||²) uses them. `subset` keeps them, `gram` and
        `sq_distances` put them on the diagonal; `mixed` and `scaled` do not use them. (The
        rows measure summed rows on themselves too now, `gram`; this saves the passes.)
        """
        v = np.array(sq, dtype=np.float64)
        if v.shape != (len(self),):
            raise ValueError(f"need {len(self)} squared norms, got shape {v.shape}")
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError("squared norms must be finite and non-negative")
        out = UpdateRows(
            [],
            self.size,
            weights=self.weights,
            labels=self.labels,
            mix=self.mix,
            _shared=self._base,
        )
        out._measured_sq = v
        return out

    def _summed(self) -> npt.NDArray[np.int64]:
        """Positions of the rows that sum two or more base updates (nonzero coefficients).

        Such a row's Gram entries are not safe: a bucket mean of a report and its near
        negation (~1e6 per coordinate) has ||y||² = sum_jk c_j c_k <x_j, x_k>, the difference
        of numbers near 1e12·d whose float64 error (~1e-16 of them) is far more than the true
        value, so colluders could make a far row look near (Krum, NNM) or move the geometric
        median and centered clipping's distances (helper-188). A row that is one base update
        scaled has no such cancellation.
        """
        if self.mix is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.count_nonzero(self.mix, axis=1) > 1).astype(np.int64)

    def _row(self, i: int) -> F64:
        """Row i as a dense float64[d] (its exact float64 combination, not rounded)."""
        eye = np.zeros(len(self))
        eye[i] = 1.0
        return self.combine(eye)

    def gram(self) -> F64:
        """float64[n', n'] of row inner products <y_i, y_j>.

        Rows that are base updates scaled take theirs from the base Gram matrix. Each row that
        sums base updates (`_summed`) is built as a dense float64[d], one at a time: its
        squared norm is taken on it, and its dot with each row y_j is sum_k c_jk <y_i, x_k>,
        whose float64 error is about 1e-16·||y_i||·sum_k |c_jk| ||x_k||, small when y_i is
        (the cancelling sum is the dense row, not its decomposition). Of the two ways to get
        <y_i, y_j> for two summed rows, the one with the smaller such bound is taken. Extra
        cost: one combine and one sparse dot pass per summed row, O(n_s·(N + d)) time and one
        float64[d] row plus float64[n_s, n'] at a time.
        """
        if self._gram is not None:
            return self._gram
        g = self._base.gram()
        if self.mix is None:
            return g
        out = self.mix @ g @ self.mix.T
        summed = self._summed()
        if summed.shape[0]:
            h = np.empty((summed.shape[0], len(self)))
            sq = np.empty(summed.shape[0])
            for k, i in enumerate(summed.tolist()):
                y = self._row(i)
                sq[k] = float(y @ y)
                h[k] = self.mix @ self._base.dots(y)
                del y
            # Error bound of h[k, j] up to the unit roundoff: ||y_i|| · sum_k |c_jk| ||x_k||.
            spread = np.abs(self.mix) @ np.sqrt(self._base.sq_norms())
            own = np.sqrt(sq)
            out[summed, :] = h
            out[:, summed] = h.T
            hs = h[:, summed]
            first = own[:, None] * spread[summed][None, :] <= own[None, :] * spread[summed][:, None]
            out[np.ix_(summed, summed)] = np.where(first, hs, hs.T)
            out[summed, summed] = sq
            if self._sq is None:
                self._sq = np.diagonal(out).copy()
            # Two rows whose reports both nearly cancel (`_wide`): both bounds are large, so
            # their dot is taken between the two rows themselves (a wide row against a
            # summed one that is not wide takes the first route above, whose bound is small).
            wide = self._wide()
            if len(wide) > 1:
                scratch = np.zeros(self.size)
                for a, i in enumerate(wide[:-1]):
                    idx_i, v_i = self._wide_row(i)
                    scratch[idx_i] = v_i
                    for j in wide[a + 1 :]:
                        idx_j, v_j = self._wide_row(j)
                        out[i, j] = out[j, i] = float(scratch[idx_j] @ v_j)
                    scratch[idx_i] = 0.0
                del scratch
        if self._measured_sq is not None:
            np.fill_diagonal(out, self._measured_sq)
        self._gram = out
        return out

    def sq_norms(self) -> F64:
        """float64[n'] squared L2 norms of the rows (as measured, if `with_sq_norms` gave them).

        A row that sums base updates is measured on itself (see `gram`), one dense row at a
        time; the others from the base updates' squared norms.
        """
        if self._measured_sq is not None:
            return self._measured_sq.copy()
        if self.mix is None:
            return self._base.sq_norms()
        if self._sq is None:
            # Scaled/selected base rows: no Gram needed (and no cancellation).
            sq = np.asarray((self.mix**2) @ self._base.sq_norms(), dtype=np.float64)
            for i in self._summed().tolist():
                y = self._row(i)
                sq[i] = float(y @ y)
                del y
            self._sq = sq
        return self._sq.copy()

    def sq_distances(self) -> F64:
        """float64[n', n'] squared L2 distances between rows (from the Gram matrix)."""
        g = self.gram()
        diag = np.diag(g)
        d2 = diag[:, None] + diag[None, :] - 2.0 * g
        np.maximum(d2, 0.0, out=d2)
        np.fill_diagonal(d2, 0.0)
        return d2

    def _wide(self) -> list[int]:
        """Positions of the summed rows whose reports' spread sum_k |c_k| ||u_k|| exceeds
        `WIDE_SPREAD` times the row's own norm (once per rows object).

        Their dot with a dense z taken through the reports, sum_k c_k <z, u_k>, errs by about
        1e-16·||z||·sum_k |c_k| ||u_k||, which for a report and its near negation at 1e20 a
        coordinate is far more than <z, y_i> (helper-188's remaining limit: a bucket row's dot
        of -3.42 came out 0). Only colluders' rows cancel like that: a mean of honest reports
        has a spread of a few times its norm (about sqrt(s) for s unrelated reports).
        """
        if self._wide_pos is None:
            summed = self._summed()
            if self.mix is None or summed.shape[0] == 0:
                self._wide_pos = []
            else:
                spread = np.abs(self.mix[summed]) @ np.sqrt(self._base.sq_norms())
                own = np.sqrt(np.maximum(self.sq_norms()[summed], 0.0))
                self._wide_pos = summed[spread > WIDE_SPREAD * own].tolist()
        return self._wide_pos

    def _wide_row(self, i: int) -> tuple[npt.NDArray[np.int64], F64]:
        """Row i's nonzeros (indices, float64 values) as its exact float64 combination.

        Built from the row's own reports only (the same sums, in the same order, as `combine`
        forms them), through one float64[d] scratch. Kept while the kept rows hold at most as
        many values as the base updates (16·N bytes); rows beyond that are rebuilt per call.
        """
        hit = self._wide_cache.get(i)
        if hit is not None:
            return hit
        assert self.mix is not None
        base, coef = self._base, self.mix[i]
        src = np.flatnonzero(coef)
        pos = np.concatenate(
            [np.arange(base.offsets[k], base.offsets[k + 1], dtype=np.int64) for k in src]
        )
        dense = _wsum(base.idx[pos], coef[base.row_of[pos]] * base.vals[pos], self.size)
        del pos
        idx = np.flatnonzero(dense).astype(np.int64)
        out = (idx, dense[idx])
        del dense
        if self._wide_cached + idx.shape[0] <= base.vals.shape[0]:
            self._wide_cache[i] = out
            self._wide_cached += idx.shape[0]
        return out

    def dots(self, z: npt.NDArray[np.floating]) -> F64:
        """float64[n'] of <y_i, z> for a dense z of length d.

        From the base updates' dots, sum_k c_ik <z, u_k>, except for rows whose reports nearly
        cancel (`_wide`), whose dot is taken on the row's own nonzeros: error about
        1e-16·||z||·||y_i|| rather than 1e-16·||z||·sum_k |c_ik| ||u_k||.
        """
        b = self._base.dots(z)
        if self.mix is None:
            return b
        out: F64 = self.mix @ b
        wide = self._wide()
        if wide:
            z64 = np.asarray(z, dtype=np.float64)
            for i in wide:
                idx, v = self._wide_row(i)
                out[i] = float(z64[idx] @ v)
        return out

    def combine(self, coef: npt.ArrayLike) -> F64:
        """sum_i coef[i] y_i as a dense float64[d] (one d-vector of memory)."""
        c = np.asarray(coef, dtype=np.float64)
        if c.shape != (len(self),):
            raise ValueError(f"need {len(self)} coefficients, got shape {c.shape}")
        if self.mix is None:
            return self._base.combine(c)
        # Rows whose reports nearly cancel (`_wide`) are added from their own nonzeros: summed
        # through the base updates, another row's values at the same coordinate would be
        # added to c·1e20 and lost when the partner's -c·1e20 cancels it (the error is
        # ~1e-16·sum_k |c_k u_kj| per coordinate). A single row (`dense_rows`) has no others.
        wide = []
        if np.count_nonzero(c) > 1 and self._summed().shape[0]:
            wide = [i for i in self._wide() if c[i] != 0.0]
        if not wide:
            return self._base.combine(self.mix.T @ c)
        rest = c.copy()
        rest[wide] = 0.0
        out = self._base.combine(self.mix.T @ rest)
        for i in wide:
            idx, v = self._wide_row(i)
            out[idx] += c[i] * v
        return out

    def blocks(self, block_elems: int = DEFAULT_BLOCK_ELEMS) -> Iterator[tuple[int, int, F32]]:
        """Yield `(start, stop, float32[n', stop - start])` coordinate blocks covering [0, d).

        The block width c is chosen so that max(n, n')·c <= block_elems (at least 1 column).
        """
        rows = len(self)
        width = max(1, block_elems // max(rows, self._base.n, 1))
        for start, stop, block in self._base.blocks(width):
            if self.mix is None:
                yield start, stop, block
            else:
                yield start, stop, (self.mix @ block).astype(np.float32)

    def sent_blocks(
        self, block_elems: int = DEFAULT_BLOCK_ELEMS
    ) -> Iterator[tuple[int, int, F32, Bools]]:
        """As `blocks`, with bool[n', stop - start]: which row sent which coordinate.

        A base row sent a coordinate when its sparse update lists the index (a value sent as
        0 counts as sent); a mixed row when one of the base rows it mixes with a nonzero
        coefficient did. The mask adds one byte per block scalar.
        """
        rows = len(self)
        width = max(1, block_elems // max(rows, self._base.n, 1))
        # 0/1 in float32: "some source with a nonzero coefficient sent it" as a BLAS product
        # (numpy's bool matmul is a plain loop, many times slower on sparse masks).
        mixes = None if self.mix is None else (self.mix != 0.0).astype(np.float32)
        for start, stop, block, sent in self._base.sent_blocks(width):
            if self.mix is None or mixes is None:
                yield start, stop, block, sent
            else:
                mixed = (self.mix @ block).astype(np.float32)
                yield start, stop, mixed, (mixes @ sent.astype(np.float32)) > 0.0

    def dense_rows(self) -> Iterator[F32]:
        """Each row in turn as a dense float32[d], rounded as `materialize` rounds it.

        One row at a time: a consumer that only sums (FedAvg) holds one float32[d] and the
        float64[d] it is computed in, never the n rows. Time O(total nnz + d) per row.
        """
        eye = np.zeros(len(self))
        for i in range(len(self)):
            eye[:] = 0.0
            eye[i] = 1.0
            yield self.combine(eye).astype(np.float32)

    def materialize(self) -> list[ClientUpdate]:
        """The rows as ClientUpdates (sparse over their nonzeros), all at once.

        A mixed row can hold up to min(d, sum of its sources' nnz) values, so the list can take
        n times that: this is only used to hand rows to an inner aggregator that understands
        neither UpdateRows nor `dense_rows` (a custom one, the collusion screen).
        """
        if self.mix is None:
            return [
                ClientUpdate(label, upd, float(w))
                for label, upd, w in zip(self.labels, self._base.updates, self.weights, strict=True)
            ]
        out = []
        for i, dense in enumerate(self.dense_rows()):
            idx = np.flatnonzero(dense).astype(np.int64)
            upd = SparseUpdate(idx, dense[idx], self.size)
            out.append(ClientUpdate(self.labels[i], upd, float(self.weights[i])))
        return out


def _wsum(bins: npt.NDArray[np.int64], weights: F64, length: int) -> F64:
    """float64[length]: out[b] = sum of weights whose bin is b (np.bincount, typed)."""
    out: F64 = np.bincount(bins, weights=weights, minlength=length).astype(np.float64, copy=False)
    return out


class _Base:
    """The n decoded updates, concatenated once for vectorised sparse dot products."""

    def __init__(
        self, updates: Sequence[SparseUpdate], size: int, names: Sequence[str] | None = None
    ) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        for u in updates:
            if u.size != size:
                raise ValueError(f"update of size {u.size}, expected {size}")
        self.updates = list(updates)
        self.size = size
        self.n = len(self.updates)
        for row, u in enumerate(self.updates):
            # A NaN would spread through every Gram entry, distance and mix (Krum's combine
            # multiplies it by 0 and still gets NaN); refuse it before any of them is computed.
            # One report at a time: a mask over all N values would add a byte per value to the
            # 24 the concatenation below takes.
            if not np.isfinite(u.values).all():
                name = names[row] if names is not None and len(names) == self.n else f"update {row}"
                raise NonFiniteReportError(f"report from {name} holds NaN or infinity")
        counts = np.array([u.nnz for u in self.updates], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self.n:
            self.idx = np.concatenate([u.indices for u in self.updates]).astype(
                np.int64, copy=False
            )
            self.vals = np.concatenate([u.values for u in self.updates]).astype(np.float64)
        else:
            self.idx = np.zeros(0, dtype=np.int64)
            self.vals = np.zeros(0, dtype=np.float64)
        self.row_of = np.repeat(np.arange(self.n, dtype=np.int64), counts)
        self._gram: F64 | None = None
        self._sq: F64 | None = None
        # The reports' names and declared weights, when rows were made of them (`claims`).
        self.claims: tuple[list[str], F64] | None = None

    def sq_norms(self) -> F64:
        if self._sq is None:
            self._sq = _wsum(self.row_of, self.vals * self.vals, self.n)
        return self._sq

    def gram(self) -> F64:
        """Pairwise sparse dot products: scatter row i into one dense scratch, gather the rest.

        Time O(n · total nnz); memory one float64[d] scratch plus float64[n, n].
        """
        if self._gram is None:
            n = self.n
            g = np.zeros((n, n), dtype=np.float64)
            scratch = np.zeros(self.size, dtype=np.float64)
            for i in range(n):
                lo, hi = self.offsets[i], self.offsets[i + 1]
                idx_i = self.idx[lo:hi]
                scratch[idx_i] = self.vals[lo:hi]
                prods = scratch[self.idx[lo:]] * self.vals[lo:]
                g[i, i:] = np.bincount(self.row_of[lo:] - i, weights=prods, minlength=n - i)[
                    : n - i
                ]
                scratch[idx_i] = 0.0
            self._gram = np.triu(g) + np.triu(g, 1).T
        return self._gram

    def dots(self, z: npt.NDArray[np.floating]) -> F64:
        if z.shape != (self.size,):
            raise ValueError(f"z must have shape ({self.size},), got {z.shape}")
        prods = np.asarray(z, dtype=np.float64)[self.idx] * self.vals
        return _wsum(self.row_of, prods, self.n)

    def combine(self, coef: F64) -> F64:
        # Indices repeat across updates; bincount sums the repeats into one float64[d].
        return _wsum(self.idx, coef[self.row_of] * self.vals, self.size)

    def blocks(self, width: int) -> Iterator[tuple[int, int, F32]]:
        for start, stop, block, _ in self._blocks(width, sent=False):
            yield start, stop, block

    def sent_blocks(self, width: int) -> Iterator[tuple[int, int, F32, Bools]]:
        for start, stop, block, sent in self._blocks(width, sent=True):
            assert sent is not None
            yield start, stop, block, sent

    def _blocks(self, width: int, *, sent: bool) -> Iterator[tuple[int, int, F32, Bools | None]]:
        bounds = np.array([*range(0, self.size, width), self.size], dtype=np.int64)
        # cut[j, b]: first position of update j at or after coordinate bounds[b].
        # Filled in place: stacking a list of its rows held the table twice at the peak.
        cut = np.empty((self.n, bounds.shape[0]), dtype=np.int64) if self.n else None
        if cut is not None:
            for j, u in enumerate(self.updates):
                cut[j] = np.searchsorted(u.indices, bounds)
        for b in range(bounds.shape[0] - 1):
            start, stop = int(bounds[b]), int(bounds[b + 1])
            block = np.zeros((self.n, stop - start), dtype=np.float32)
            mask = np.zeros((self.n, stop - start), dtype=np.bool_) if sent else None
            if cut is not None:
                for j, u in enumerate(self.updates):
                    lo, hi = cut[j, b], cut[j, b + 1]
                    if hi > lo:
                        block[j, u.indices[lo:hi] - start] = u.values[lo:hi]
                        if mask is not None:
                            mask[j, u.indices[lo:hi] - start] = True
            yield start, stop, block, mask


@runtime_checkable
class RowAggregationProcess(Protocol):
    """A process that can also aggregate lazily mixed rows (no materialisation)."""

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput: ...


def forward_rows(process: Any, state: Any, rows: UpdateRows) -> AggregateOutput:
    """Hand rows to an inner process: lazily if it understands UpdateRows, else materialised."""
    if isinstance(process, RowAggregationProcess):
        return process.next_rows(state, rows)
    result: AggregateOutput = process.next(state, rows.materialize())
    return result


# ---------------------------------------------------------------------------------------------
# Robust aggregators. Claimed example counts come from devices and are attacker-controlled, so
# every aggregator here weighs reports uniformly (a `bucket` stage weighs them in its buckets
# only as a FedAvg behind it would weigh them: `count_weighting`).
# ---------------------------------------------------------------------------------------------


def resolve_f(f: float, n: int) -> int:
    """Number of tolerated Byzantine reports: `f` itself if >= 1, else floor(f·n) for 0<=f<1."""
    if isinstance(f, int) and not isinstance(f, bool) and f >= 1:
        # A whole count of any size (Krum(f=10**400)): np.isfinite of one past int64 raised
        # TypeError, and math.isfinite of one past float's range OverflowError.
        return f
    if not finite_number(f) or f < 0:
        raise ValueError(f"f must be a non-negative count or a fraction in [0, 1), got {shown(f)}")
    if f >= 1:
        if f != int(f):
            raise ValueError(f"f >= 1 must be a whole number of clients, got {shown(f)}")
        return int(f)
    return floor_times(f, n)


def floor_times(f: float, n: int) -> int:
    """⌊f·n⌋ for the decimal that f is written as (its shortest repr), exactly.

    The float product can fall just below a whole number: 0.29·100 is 28.999999999999996 in
    floating point and floored to 28, where the docs' ⌊f·n⌋ of a spec's f=0.29 is 29.
    """
    return math.floor(Fraction(repr(float(f))) * n)


def ceil_times(f: float, n: int) -> int:
    """⌈f·n⌉ for the decimal that f is written as (its shortest repr), exactly.

    A count c is "at least the fraction f of n" exactly when c >= ceil_times(f, n). The float
    product can land just above a whole number: 0.14·50 is 7.000000000000001 in floating point,
    so 7 agreeing votes of 50 failed RLR's theta=0.14 and 7 drops of 25 did not reach a
    max_drop of 0.28, where 7 is exactly 0.14·50 and 0.28·25 (`floor_times` has the converse).
    """
    return math.ceil(Fraction(repr(float(f))) * n)


# `cohort_refusal` refuses a `bucket` stage that leaves fewer bucket means than this at a full
# round, and `Bucketing` measures `guarantee_holds: false` for a round that has fewer.
MIN_BUCKETS = 3


def cohort_refusal(
    factory: Any,
    reports: int,
    *,
    unit: str = "reports",
    src: str = "clients_per_round",
    grow: str = "clients_per_round",
) -> str | None:
    """Why a full round of `reports` reports can never meet a stage's bound, or None.

    Walks the stages (`inner` slots): Krum and multi-Krum need n > 2f + 2, NNM needs f < n/2
    (Allouah et al.), and a fraction f (trimmed mean: beta) must tolerate at least one report,
    ⌊f·n⌋ >= 1; bucketing hands its inner rule ⌈n/s⌉ bucket means. A count f that fails at the
    full round fails in every smaller one too, so such a task could never run with the
    guarantee its rule is chosen for. Rounds that close with fewer reports (dropouts) are
    recorded per round instead (`guarantee_holds`). Secure grouped mode passes its group count
    (`unit` "group sums", `src` how it follows from the task, `grow` what raises it).
    """
    n, stage, first = reports, factory, unit
    while stage is not None:
        if isinstance(stage, (Krum, NearestNeighborMixing)):
            f = resolve_f(stage.f, n)
            if isinstance(stage, NearestNeighborMixing):
                name, least = "nnm: NNM needs f < n/2", 2 * f
            else:
                name = "krum" if stage.m == 1 else "multikrum"
                name, least = f"{name}: Krum needs n > 2f + 2", 2 * f + 2
            given = f"f={_num(stage.f)}" + (f" (floor(f·n) = {f})" if 0 < stage.f < 1 else "")
            if 0 < stage.f < 1 and f == 0:
                return (
                    f"{name.split(':')[0]}: {given} of a full round's {n} {unit} ({src}) "
                    f"tolerates none, so no round has the rule's guarantee (raise {grow} or f)"
                )
            if not n > least:
                return (
                    f"{name}, so {given} needs more than {_num(least)} {unit} a round, and a full "
                    f"round has {n} ({src}) (raise {grow} or lower f)"
                )
        elif isinstance(stage, TrimmedMean) and stage.beta > 0 and resolve_f(stage.beta, n) == 0:
            # beta < 0.5 trims one a side from 1/n on, so only from n = 3: over 2 or fewer no
            # beta trims (s45: the hint said "or beta" there too, which no beta could follow)
            fix = (
                f"raise {grow}, or beta to at least 1/n: {math.ceil(10**4 / n) / 10**4:g}"
                if n >= 3
                else f"raise {grow} to 3 or more: over {n} no beta below 0.5 trims one"
            )
            # With support=1 the threshold is then 1: each sent coordinate is its senders'
            # mean, not the plain mean, and untrimmed all the same.
            plain = (
                "its senders' mean on every sent coordinate" if stage.support else "the plain mean"
            )
            return (
                f"trimmed_mean: beta={_num(stage.beta)} trims floor(beta·n) = 0 of a full "
                f"round's {n} {unit} ({src}) a side, so every round is {plain} ({fix})"
            )
        elif isinstance(stage, Bucketing):
            buckets = -(-n // stage.bucket_size)
            if buckets < MIN_BUCKETS:
                # The median of two values is their mean, and the geometric median of two
                # points, started from their mean, stays there: over 2 or fewer bucket means no
                # rule can outvote a bad one, and one huge report moves the round at will
                # (median, geomed and cclip have no f, so nothing below would say so).
                means = "bucket mean" if buckets == 1 else "bucket means"
                return (
                    f"bucket: s={_num(stage.bucket_size)} leaves {buckets} {means} of a full "
                    f"round's {n} {unit} ({src}), and over {MIN_BUCKETS - 1} or fewer no rule "
                    f"can outvote a bad one (the median of two is their mean): s must be below "
                    f"n/2 = {_num(n / 2)} for {MIN_BUCKETS} bucket means or more (lower s or "
                    f"raise {grow})"
                )
            n, unit = buckets, "bucket means"
            whole = f"{src}={reports}" if first == "reports" else f"{reports} {first}, {src}"
            src = f"{whole} in buckets of {stage.bucket_size}"
        stage = getattr(stage, "inner", None)
    return None


# At or above this a count is written in exponent form (1e+300), not as its hundreds of digits.
_LARGE_COUNT = 1e15


def _num(v: float) -> str:
    """v as written in a spec: 2 for 2.0, 0.45 for 0.45; 1e+300 for 1e300 (a whole number that
    large printed every digit: krum:f=1e300's refusal named a 301-digit f). A whole count past
    float's range (2f + 2 of krum:f=1e308) is written the same way: 2e+308, never through a
    float (math.isfinite and format(v, "g") of such an int raise OverflowError)."""
    if isinstance(v, int) and abs(v) >= _LARGE_COUNT:
        digits = str(Decimal(v).normalize(Context(prec=6, rounding=ROUND_HALF_EVEN)))
        return digits.replace("E", "e")
    if abs(v) >= _LARGE_COUNT and math.isfinite(v):
        return f"{v:.6g}"
    return str(int(v)) if _whole(v) else repr(v)


def _fraction_meas(f: float) -> dict[str, Any]:
    """`f_fraction` for a fractional f (0 < f < 1), which `guarantee_holds` needs: a fraction
    that resolves to 0 in a round (⌊f·n⌋ = 0, a small or dropout round) tolerates no report,
    and the rule then computes its attack-free form (Krum's and NNM's plain selection and
    mean, the trimmed mean's mean) without the guarantee it was chosen for."""
    return {"f_fraction": f} if 0 < f < 1 else {}


def _whole(v: float) -> bool:
    """v is a finite whole number (int(inf) would raise OverflowError, not say no); an int is,
    of any size (math.isfinite of one past float's range raised OverflowError instead)."""
    if isinstance(v, int):
        return True
    return bool(finite_number(v) and v == int(v))


def _zeros(size: int) -> F32:
    return np.zeros(size, dtype=np.float32)


class _RowProcess:
    """Shared plumbing: `next` builds UpdateRows from ClientUpdates and calls `next_rows`."""

    size: int

    def initialize(self) -> Any:
        return ()

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput:
        return self.next_rows(state, UpdateRows.from_client_updates(updates, self.size))

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        raise TypeError(f"{type(self).__name__} must define next_rows")


@dataclass(frozen=True, slots=True)
class CoordinateMedian:
    """Coordinate-wise median of the reports (Yin et al. 2018); missing coordinates count as 0.

    Memory: the result float32[d] plus about 3 · block_elems float32 scalars (one coordinate
    block of n×c and the copy np.median partitions), never n×d.
    """

    block_elems: int = DEFAULT_BLOCK_ELEMS

    def __post_init__(self) -> None:
        _check_block(self.block_elems)

    def create(self, size: int) -> _MedianProcess:
        return _MedianProcess(size, self.block_elems)


def _sender_values(block: F32, sent: Bools, cols: npt.NDArray[np.int64]) -> F32:
    """float32[n, len(cols)]: each column's senders' values sorted first, then +inf (unsent).

    Reports are finite (UpdateRows refuses others), so +inf marks exactly the unsent places.
    One float32 copy of the columns and one bool[n, len(cols)], filled and sorted in place.
    """
    vals = block[:, cols]
    unsent = sent[:, cols]
    np.logical_not(unsent, out=unsent)
    np.copyto(vals, np.float32(np.inf), where=unsent)
    del unsent
    vals.sort(axis=0)
    return vals


def _check_block(block_elems: int) -> None:
    if not block_elems >= 1:
        raise ValueError(f"block_elems must be >= 1, got {shown(block_elems)}")


def _coordinate_median(rows: UpdateRows, block_elems: int) -> F32:
    """float32[d] coordinate-wise median of the rows (n' >= 1), one coordinate block at a time.

    np.median averages the two middle values of an even count in float32, which overflows to
    inf when both exceed half of float32's largest value (a majority of huge reports); such
    columns are recomputed in float64, whose mean of two float32 values always fits float32.
    Every other column is np.median's float32 result, bit for bit.
    """
    out = _zeros(rows.size)
    for start, stop, block in rows.blocks(block_elems):
        with np.errstate(over="ignore"):
            med = np.median(block, axis=0)
        bad = ~np.isfinite(med)
        if bad.any():
            med[bad] = np.median(block[:, bad].astype(np.float64), axis=0)
        out[start:stop] = med
    return out


class _MedianProcess(_RowProcess):
    def __init__(self, size: int, block_elems: int) -> None:
        self.size, self.block_elems = size, block_elems

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        out = _coordinate_median(rows, self.block_elems) if len(rows) else _zeros(self.size)
        return AggregateOutput(state, out, {"clients": len(rows)})


@dataclass(frozen=True, slots=True)
class TrimmedMean:
    """Coordinate-wise mean after dropping the floor(beta·n) largest and smallest values.

    beta in [0, 0.5); the trim is capped so that at least one value per coordinate remains.
    `support=True` is the support rule for sparse (top-k) reports. With t = floor(beta·n), the
    trim of the round: a coordinate that at least 2t + 1 reports sent is the mean of those
    senders' values after dropping the t largest and t smallest of them; any other coordinate
    is the plain rule's (the n values, unsent ones counted as 0, t dropped at each end). Both
    tolerate t attackers per coordinate: at most t attacker values, whatever they are, leave
    the result within the honest values (the honest senders' values where supported), and
    attackers alone never set a coordinate no honest report sent. A round's attackers beyond t
    move both without bound. On dense reports (every report sends every coordinate) it is
    the plain rule, bit for bit. A round with t = 0 (beta > 0) trims nothing and measures
    `guarantee_holds: false`: without `support` it is the plain mean (unsent values counted as
    0); with `support` the threshold is 1, so each coordinate some report sent is the mean of
    its senders' values alone, not the plain mean (one report sending only 5 on coordinate 0
    and one sending only 1 on coordinate 1 give [5, 1], not [2.5, 0.5]), and a coordinate no
    report sent is 0.
    Memory: the result float32[d] plus about 3 · block_elems float32 scalars, never n×d; with
    `support`, also the sent mask (one byte per block scalar), a float32 copy of the
    supported columns and a bool temporary of the copy's shape: about 10 bytes per block
    scalar at the peak (tests/coordinator/test_h155_support_memory.py).
    """

    beta: float = 0.1
    block_elems: int = DEFAULT_BLOCK_ELEMS
    support: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 0.5:
            raise ValueError(f"trimmed mean beta must be in [0, 0.5), got {shown(self.beta)}")
        _check_block(self.block_elems)
        if not isinstance(self.support, bool):
            raise ValueError(
                f"trimmed mean support must be True or False, got {shown(self.support)}"
            )

    def create(self, size: int) -> _TrimmedMeanProcess:
        return _TrimmedMeanProcess(size, self.beta, self.block_elems, self.support)


class _TrimmedMeanProcess(_RowProcess):
    def __init__(self, size: int, beta: float, block_elems: int, support: bool = False) -> None:
        self.size, self.beta, self.block_elems, self.support = size, beta, block_elems, support

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        n = len(rows)
        out = _zeros(self.size)
        trim = min(floor_times(self.beta, n), (n - 1) // 2) if n else 0
        if not self.support:
            if n:
                for start, stop, block in rows.blocks(self.block_elems):
                    block.sort(axis=0)
                    out[start:stop] = block[trim : n - trim].mean(axis=0, dtype=np.float64)
            return AggregateOutput(state, out, self._meas(n, trim))
        threshold, supported = 2 * trim + 1, 0
        if n:
            pos = np.arange(n)[:, None]
            for start, stop, block, sent in rows.sent_blocks(self.block_elems):
                counts = sent.sum(axis=0)
                cols = np.flatnonzero(counts >= threshold)
                k = counts[cols]
                kept = None
                if cols.size:
                    # Memory, bytes per block scalar: the block (4), the mask (1), this copy
                    # (4) and one bool temporary (1) at a time, within the docs' 16·block.
                    vals = _sender_values(block, sent, cols)
                    # The senders' values sit sorted in rows [0, k): keep rows [trim, k - trim)
                    # by zeroing the others in place (the t smallest, the t largest, unsent).
                    vals[:trim] = 0.0
                    vals[pos >= k - trim] = 0.0
                    kept = vals.sum(axis=0, dtype=np.float64)
                    del vals
                del sent
                block.sort(axis=0)
                res = block[trim : n - trim].mean(axis=0, dtype=np.float64)
                if kept is not None:
                    res[cols] = kept / (k - 2 * trim)
                    supported += int(cols.size)
                out[start:stop] = res
        return AggregateOutput(
            state,
            out,
            self._meas(n, trim) | {"support_threshold": threshold, "supported_coords": supported},
        )

    def _meas(self, n: int, trim: int) -> dict[str, Any]:
        meas: dict[str, Any] = {"clients": n, "trimmed_each_side": trim}
        if n and self.beta > 0:
            # beta > 0 and floor(beta·n) = 0: the round trims nothing (the plain mean, or with
            # support each sent coordinate's senders' mean).
            meas.update(beta=self.beta, guarantee_holds=trim >= 1)
        return meas


@dataclass(frozen=True, slots=True)
class RobustLearningRate:
    """Uniform mean with a per-coordinate learning-rate sign (RLR, Ozdayi et al. 2021).

    Every report casts a sign vote on every coordinate, and for coordinate j the vote is
    v_j = |sum_i sign(y_ij)|. Where v_j < `theta` the mean's coordinate is multiplied by
    `low_lr`, elsewhere by 1. `low_lr = -1` is the paper's rule: the step on a low-agreement
    coordinate is reversed (its sign flipped), so a backdoor pushed by a few devices is
    unlearnt. 0 only freezes the coordinate, and values in between do part of each. `theta` is
    a count (>= 1) or a fraction of the round's reports. A report that did not send coordinate
    j (top-k sparsity) has sign 0 there and casts no vote, so a coordinate sent by fewer than
    theta devices is reversed even when they all agree.
    A count theta above the round's n cannot be met, and the paper's rule would then reverse
    the whole mean, even for unanimous reports. So theta is capped at n (a coordinate keeps its
    sign only when every report agrees on it), and the measurement `theta_capped` says so.
    Memory as TrimmedMean (coordinate blocks, never n×d).
    """

    theta: float = 2.0
    low_lr: float = -1.0
    block_elems: int = DEFAULT_BLOCK_ELEMS

    def __post_init__(self) -> None:
        if isinstance(self.theta, int) and self.theta > 0 and not finite_number(self.theta):
            # Positive, and refused for its size: "must be > 0" said the wrong thing.
            raise ValueError(
                f"RLR theta {shown(self.theta)} is past a float's range (about 1.8e+308); "
                "a theta above a round's report count is capped at that count, so give one "
                "at most the cohort's size"
            )
        if not finite_number(self.theta) or self.theta <= 0:
            raise ValueError(f"RLR theta must be > 0, got {shown(self.theta)}")
        if self.theta >= 1 and self.theta != int(self.theta):
            raise ValueError(f"RLR theta >= 1 must be a whole number, got {shown(self.theta)}")
        if not -1.0 <= self.low_lr <= 0.0:
            raise ValueError(f"RLR low_lr must be in [-1, 0], got {shown(self.low_lr)}")
        if self.block_elems < 1:
            raise ValueError("block_elems must be >= 1")

    def create(self, size: int) -> _RLRProcess:
        return _RLRProcess(size, self.theta, self.low_lr, self.block_elems)


class _RLRProcess(_RowProcess):
    def __init__(self, size: int, theta: float, low_lr: float, block_elems: int) -> None:
        self.size, self.theta, self.low_lr, self.block_elems = size, theta, low_lr, block_elems

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        n = len(rows)
        out = _zeros(self.size)
        if not n:
            theta, need = 0.0, 0
        elif self.theta >= 1:
            theta, need = float(self.theta), int(self.theta)
        else:
            # A fraction is theta·n of the decimal theta is written as, exactly: the float
            # product 0.14·50 = 7.000000000000001 turned "at least 0.14 of the reports" into 8
            # of 50. Votes are whole numbers, so "votes >= theta·n" is "votes >= ⌈theta·n⌉".
            exact = Fraction(repr(float(self.theta))) * n
            theta, need = float(exact), math.ceil(exact)
        capped = need > n
        theta, need = min(theta, float(n)), min(need, n)
        low = 0
        if n:
            for start, stop, block in rows.blocks(self.block_elems):
                agree = np.abs(np.sign(block).sum(axis=0, dtype=np.float64))
                lr = np.where(agree >= need, 1.0, self.low_lr)
                low += int(np.count_nonzero(agree < need))
                out[start:stop] = lr * block.mean(axis=0, dtype=np.float64)
        return AggregateOutput(
            state,
            out,
            {
                "clients": n,
                "theta": float(theta),
                "theta_capped": capped,
                "low_agreement_coords": low,
            },
        )


@dataclass(frozen=True, slots=True)
class Krum:
    """Krum / multi-Krum (Blanchard et al. 2017): average the m reports with the lowest score.

    A report's score is the sum of squared distances to its n - f - 2 nearest other reports.
    `f` is a count (>= 1) or a fraction of the round's reports; `m=1` is Krum, `m=None` takes
    n - f (multi-Krum's usual choice). Multi-Krum selects m <= n - f (Blanchard et al.): a
    larger m would have to average in some of the f reports Krum exists to leave out (m >= n
    made it the plain mean), so a round with fewer than m + f reports averages n - f and says
    so (measurements `m`, `m_capped`). Below n = 2f + 3 the paper's guarantee does not hold;
    the rule still runs, with at least one neighbour per score and one report selected, and
    reports `guarantee_holds: false`, as it does when a fraction f resolves to 0 in a round. A fraction f >= 0.5 can never meet n > 2f + 2 and is
    refused when the factory is built. Distances come from sparse dot products:
    memory float64[n, n] plus one float64[d] scratch and the result, never n×d; time
    O(n · total nnz).
    """

    f: float = 0.2
    m: int | None = 1

    def __post_init__(self) -> None:
        resolve_f(self.f, 1)
        if 0.5 <= self.f < 1:
            # floor(f·n) >= floor(n/2), so 2f + 2 >= n + 1: no round could meet n > 2f + 2, and
            # the spec would run every round without the guarantee it is chosen for.
            raise ValueError(
                f"Krum needs n > 2f + 2, which a fraction f >= 0.5 never meets; got f={shown(self.f)} "
                "(give a fraction below 0.5 or a count)"
            )
        if self.m is not None and not (self.m >= 1 and _whole(self.m)):
            raise ValueError(f"multi-Krum m must be a whole number >= 1, got {shown(self.m)}")

    def create(self, size: int) -> _KrumProcess:
        return _KrumProcess(size, self.f, self.m)


def krum_scores(sq_dist: F64, f: int) -> F64:
    """float64[n] Krum scores from float64[n, n] squared distances (neighbours >= 1)."""
    n = sq_dist.shape[0]
    k = max(1, n - f - 2)
    if n == 1:
        return np.zeros(1)
    others = np.where(np.eye(n, dtype=bool), np.inf, sq_dist)
    k = min(k, n - 1)
    return np.asarray(np.sort(others, axis=1)[:, :k].sum(axis=1), dtype=np.float64)


class _KrumProcess(_RowProcess):
    def __init__(self, size: int, f: float, m: int | None) -> None:
        self.size, self.f, self.m = size, f, m

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        n = len(rows)
        if n == 0:
            return AggregateOutput(state, _zeros(self.size), {"clients": 0})
        f = resolve_f(self.f, n)
        scores = krum_scores(rows.sq_distances(), f)
        # At least one report is selected even when f >= n (guarantee_holds is then false).
        cap = max(1, n - f)
        m = cap if self.m is None else min(self.m, cap)
        chosen = np.argsort(scores, kind="stable")[:m]
        coef = np.zeros(n)
        coef[chosen] = 1.0 / m
        out = rows.combine(coef).astype(np.float32)
        return AggregateOutput(
            state,
            out,
            {
                "clients": n,
                "f": f,
                "m": m,
                "m_capped": self.m is not None and self.m > cap,
                "selected": [rows.labels[i] for i in chosen],
                "guarantee_holds": n > 2 * f + 2 and not (0 < self.f < 1 and f == 0),
                **_fraction_meas(self.f),
            },
        )


# Iteration bounds, refused above when a stage is built: each iteration passes over every
# report, so one round's time grows with the count. The defaults are 100 (geomed: no benchmark
# round needed more than 86, docs/robustness.md) and 1 (cclip, as Karimireddy et al. 2021).
MAX_GEOMED_ITERATIONS = 1_000
MAX_CCLIP_ITERATIONS = 100


@dataclass(frozen=True, slots=True)
class GeometricMedian:
    """Geometric median by smoothed Weiszfeld iterations (RFA, Pillutla et al. 2022).

    Minimises sum_i ||z - y_i|| over z (distances floored at nu), starting from the mean; stops
    when an iteration moves z by at most `tol`·||z|| (of the new z) or after `max_iter`
    iterations. A run that does not converge is repeated from the coordinate-wise median, whose
    iterate is taken when it is clearly better (see `next_rows`): from the mean, a large
    minority of huge reports is left behind only slowly.
    Memory: dense float64[d] iterates plus O(n + total nnz), never n×d; a restart adds one
    coordinate block of DEFAULT_BLOCK_ELEMS scalars for the median.
    """

    nu: float = 1e-6
    max_iter: int = 100
    tol: float = 1e-6

    def __post_init__(self) -> None:
        # Checked so that NaN and infinity fail here: nu = inf would divide 0 by 0 mid-round.
        if not (finite_number(self.nu) and self.nu > 0):
            raise ValueError(f"geometric median nu must be finite and > 0, got {shown(self.nu)}")
        if not self.max_iter >= 1 or self.max_iter != int(self.max_iter):
            raise ValueError(
                f"geometric median max_iter must be a whole number >= 1, got {shown(self.max_iter)}"
            )
        if self.max_iter > MAX_GEOMED_ITERATIONS:
            # Each iteration is a pass over every report (and a round that does not converge
            # runs twice): a huge count holds the round, and its close, for practically ever.
            raise ValueError(
                f"geometric median max_iter must be at most {MAX_GEOMED_ITERATIONS:,}, got "
                f"{shown(self.max_iter)}"
            )
        if not (finite_number(self.tol) and self.tol >= 0):
            raise ValueError(f"geometric median tol must be finite and >= 0, got {shown(self.tol)}")

    def create(self, size: int) -> _GeoMedProcess:
        return _GeoMedProcess(size, self.nu, self.max_iter, self.tol)


class _GeoMedProcess(_RowProcess):
    def __init__(self, size: int, nu: float, max_iter: int, tol: float) -> None:
        self.size, self.nu, self.max_iter, self.tol = size, nu, max_iter, tol

    def _distances(self, rows: UpdateRows, z: F64, sq: F64) -> F64:
        d2 = float(z @ z) - 2.0 * rows.dots(z) + sq
        return np.sqrt(np.maximum(d2, 0.0))

    def _weiszfeld(self, rows: UpdateRows, sq: F64, z: F64) -> tuple[F64, F64, int, bool]:
        """Iterate from z: (iterate, its distances to the rows, iterations, converged)."""
        dist = self._distances(rows, z, sq)
        iters = 0
        while iters < self.max_iter:
            iters += 1
            beta = 1.0 / np.maximum(dist, self.nu)
            z_new = rows.combine(beta / beta.sum())
            step = float(np.linalg.norm(z_new - z))
            z = z_new
            dist = self._distances(rows, z, sq)
            # The objective is dominated by far outliers, so stop on the iterate's movement.
            if step <= self.tol * max(float(np.linalg.norm(z)), 1e-30):
                return z, dist, iters, True
        return z, dist, iters, False

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        n = len(rows)
        if n == 0:
            return AggregateOutput(state, _zeros(self.size), {"clients": 0})
        sq = rows.sq_norms()
        z, dist, iters, converged = self._weiszfeld(rows, sq, rows.combine(np.full(n, 1.0 / n)))
        obj = float(np.maximum(dist, self.nu).sum())
        meas: dict[str, Any] = {"clients": n, "iterations": iters, "objective": obj}
        if not converged:
            # From the mean, far from the honest reports when a large minority is huge, an
            # iteration closes only a fraction (attackers / honest) of the gap: 4 of 10 reports
            # at 1e20 left the iterate 1e3 away after 100 iterations. So run again from the
            # coordinate-wise median (breakdown 1/2, inside the honest reports), and take that
            # run's iterate if it lowers the objective by more than its median distance to the
            # reports: the first iterate was then outside the reports' bulk, not merely slow
            # (near a report Weiszfeld converges sublinearly; such rounds keep their result).
            start = _coordinate_median(rows, DEFAULT_BLOCK_ELEMS).astype(np.float64)
            z2, dist2, more, _ = self._weiszfeld(rows, sq, start)
            adopt = _objective_gain(rows, z, dist, z2, dist2) > float(np.median(dist2))
            if adopt:
                z, dist = z2, dist2
                meas["objective"] = float(np.maximum(dist, self.nu).sum())
            meas.update(restart_iterations=more, restarted_from_median=adopt)
        return AggregateOutput(state, z.astype(np.float32), meas)


def _objective_gain(rows: UpdateRows, a: F64, dist_a: F64, b: F64, dist_b: F64) -> float:
    """sum_i ||a - y_i|| - ||b - y_i||, the objective's drop from a to b, without cancellation.

    Each term is <a - b, a + b - 2 y_i> / (||a - y_i|| + ||b - y_i||): linear in a - b, so it
    stays exact when the distances themselves are 1e20 and differ by 1e3.
    """
    diff = a - b
    num = float(diff @ (a + b)) - 2.0 * rows.dots(diff)
    den = dist_a + dist_b
    return float(np.sum(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)))


@dataclass(frozen=True, slots=True)
class CenteredClipping:
    """Centered clipping around a server momentum (Karimireddy et al. 2021).

    Each round: v = c; repeat `iterations` times v += mean_i clip_tau(y_i - v), where clip_tau
    scales a vector to L2 norm at most `tau`. The output is v. The centre for the next round is
    the server momentum c' = beta·c + (1 - beta)·v (beta=0: the previous aggregate).
    `tau=None` sets tau each iteration to the median distance of the reports to v (scale-free;
    at most half the reports are clipped), an addition of ours for unknown update scales.
    State: the centre float32[d]. Memory O(d + n + total nnz), never n×d.
    """

    tau: float | None = 1.0
    beta: float = 0.9
    iterations: int = 1

    def __post_init__(self) -> None:
        if self.tau is not None and not (self.tau > 0 and finite_number(self.tau)):
            raise ValueError(
                f"centered clipping tau must be finite and > 0 (or None), got {shown(self.tau)}"
            )
        if not 0 <= self.beta < 1 or not (self.iterations >= 1 and _whole(self.iterations)):
            raise ValueError(
                "centered clipping needs 0 <= beta < 1 and a whole number of iterations >= 1"
            )
        if self.iterations > MAX_CCLIP_ITERATIONS:
            # Each iteration is a pass over every report: a huge count holds the round.
            raise ValueError(
                f"centered clipping iterations must be at most {MAX_CCLIP_ITERATIONS:,}, got "
                f"{shown(self.iterations)}"
            )

    def create(self, size: int) -> _CClipProcess:
        return _CClipProcess(size, self.tau, self.beta, self.iterations)


class _CClipProcess(_RowProcess):
    def __init__(self, size: int, tau: float | None, beta: float, iterations: int) -> None:
        self.size, self.tau, self.beta, self.iterations = size, tau, beta, iterations

    def initialize(self) -> Any:
        return _zeros(self.size)

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        center = np.asarray(state, dtype=np.float32)
        if center.shape != (self.size,):
            raise ValueError(f"centered clipping state must be float32[{self.size}]")
        n = len(rows)
        if n == 0:
            return AggregateOutput(center, _zeros(self.size), {"clients": 0})
        sq = rows.sq_norms()
        v = center.astype(np.float64)
        clipped, tau = 0, 0.0
        for _ in range(self.iterations):
            dist = np.sqrt(np.maximum(float(v @ v) - 2.0 * rows.dots(v) + sq, 0.0))
            tau = float(np.median(dist)) if self.tau is None else self.tau
            s = np.minimum(1.0, tau / np.maximum(dist, 1e-30))
            # A report at distance 0 (tau = 0 when most reports sit on v) is not moved by its
            # factor: only the measurement leaves it out, the step is the same.
            clipped = int(np.count_nonzero((s < 1.0) & (dist > 0.0)))
            # mean_i s_i (y_i - v) = (sum_i s_i y_i - (sum_i s_i) v) / n
            v = v * (1.0 - s.sum() / n) + rows.combine(s / n)
        out = v.astype(np.float32)
        new_center = (self.beta * center.astype(np.float64) + (1.0 - self.beta) * v).astype(
            np.float32
        )
        return AggregateOutput(new_center, out, {"clients": n, "clipped": clipped, "tau": tau})


# ---------------------------------------------------------------------------------------------
# Pre-aggregation: linear mixes of the reports handed to an inner aggregator.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucketing:
    """Shuffle the reports into buckets of `bucket_size` and hand the bucket means to `inner`.

    Karimireddy, He and Jaggi 2022. The shuffle is drawn from (seed, round). The bucket means
    stay lazy (UpdateRows) for the robust aggregators here and FedAvg (which sums them one at
    a time); another inner gets them materialised, each with at most bucket_size · max nnz
    values.
    Each bucket weighs its reports as the rule behind the stage weighs rows (`count_weighting`,
    through any wrappers in between), and hands it the sum of their example counts as the
    bucket's weight. Behind an example-weighted FedAvg (`fedavg`, not `uniform=1`), a report
    weighs w_m / sum of its bucket's w in its bucket, so the weighted mean of the bucket means
    is FedAvg itself, whatever the shuffle: `bucket:2+fedavg` is `fedavg`. With its
    `max_weight` W each report's count is capped at W first (measurement `weights_capped`) and
    FedAvg caps each bucket's sum at W again, so it is `fedavg:max_weight=W` while no bucket's
    capped counts sum above W. Behind any other rule (the robust rules here, `fedavg:uniform=1`,
    `dp`), which weigh rows equally, a bucket mean is the plain mean of its reports, the paper's
    rule. A bucket mean used to be that plain mean always, weighted by its summed counts behind
    a FedAvg: neither FedAvg nor the uniform mean, and it moved with the shuffle (reports 0, 1,
    0, 1 of 1, 99, 1, 99 examples gave 0.99 or 0.5 by seed).
    """

    bucket_size: int = 2
    inner: AggregatorFactory = field(default_factory=CoordinateMedian)
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.bucket_size >= 1 and _whole(self.bucket_size)):
            raise ValueError(
                f"bucket size must be a whole number >= 1, got {shown(self.bucket_size)}"
            )
        if not self.seed >= 0:
            # np.random.default_rng refuses negative seeds: fail here, not in the first round.
            raise ValueError(f"bucketing seed must be >= 0, got {shown(self.seed)}")

    def create(self, size: int) -> _BucketingProcess:
        weighted, cap = count_weighting(self.inner)
        return _BucketingProcess(
            size, self.bucket_size, self.inner.create(size), self.seed, weighted, cap
        )


def count_weighting(factory: AggregatorFactory) -> tuple[bool, float | None]:
    """How the rule behind a stage weighs rows: (by their example counts, the cap on a count).

    Followed through the wrappers in between (`stages`: screens, clips, NNM, buckets, which
    hand each row's weight on). Only an example-weighted FedAvg weighs by count, each capped at
    its `max_weight` (None: no cap); a `dp` stage on the way sets every weight to 1, and the
    robust rules here and `FedAvg(uniform=True)` weigh rows equally. A rule of another kind is
    taken to weigh rows equally too.
    """
    from ._dp import DPMean  # imported here: _dp imports this module (through _clip)

    for stage in stages(factory):
        if isinstance(stage, DPMean):
            return False, None
        if isinstance(stage, FedAvg):
            return not stage.uniform, stage.max_weight
    return False, None


class _BucketingProcess(_RowProcess):
    def __init__(
        self,
        size: int,
        bucket_size: int,
        inner: AggregationProcess,
        seed: int,
        weighted: bool = False,
        cap: float | None = None,
    ) -> None:
        self.size, self.bucket_size, self.inner, self.seed = size, bucket_size, inner, seed
        # Whether the rule behind weighs rows by example count, and its cap (`count_weighting`)
        self.weighted, self.cap = weighted, cap

    def initialize(self) -> Any:
        return (0, self.inner.initialize())

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        rnd, inner_state = state
        n = len(rows)
        perm = np.random.default_rng([self.seed, rnd]).permutation(n)
        buckets = [perm[i : i + self.bucket_size] for i in range(0, n, self.bucket_size)]
        mix = np.zeros((len(buckets), n))
        capped = 0
        if self.weighted:
            # The rule behind is a weighted mean: a report weighs in its bucket as it would
            # there (its count, capped as that rule caps it), so the weighted mean of the
            # bucket means, each weighing its reports' summed counts, is that rule's mean of
            # the reports themselves, whatever the shuffle. A count FedAvg refuses (above
            # 2^53) is refused here already: the bucket sums below could overflow float64.
            check_claims(rows)
            w = rows.weights
            if self.cap is not None:
                capped = int(np.count_nonzero(w > self.cap))
                w = np.minimum(w, self.cap)
            weights = [float(w[m].sum()) for m in buckets]
            for b, members in enumerate(buckets):
                # A bucket whose counts are all 0 weighs nothing: its (plain) mean is moot.
                mix[b, members] = w[members] / weights[b] if weights[b] > 0 else 1 / len(members)
        else:
            for b, members in enumerate(buckets):
                mix[b, members] = 1.0 / len(members)
            weights = [float(rows.weights[m].sum()) for m in buckets]
        labels = [f"bucket-{b}" for b in range(len(buckets))]
        inner_out = forward_rows(
            self.inner, inner_state, rows.mixed(mix, weights=weights, labels=labels)
        )
        # A round with fewer than MIN_BUCKETS bucket means (fewer reports than the task's
        # cohort, which `cohort_refusal` checks) runs, but its inner rule is then no better
        # than their mean: say so, as Krum and NNM do below their bound.
        meas: dict[str, Any] = {
            "buckets": len(buckets),
            "bucket_size": self.bucket_size,
            "guarantee_holds": len(buckets) >= MIN_BUCKETS,
        }
        if self.weighted and self.cap is not None:
            meas["weights_capped"] = capped
        meas["inner"] = inner_out.measurements
        return AggregateOutput((rnd + 1, inner_out.state), inner_out.result, meas)


@dataclass(frozen=True, slots=True)
class NearestNeighborMixing:
    """Replace each report by the mean of its n - f nearest reports (itself included).

    Allouah et al. 2023 ("Fixing by mixing"). `f` is a count or a fraction of the round's
    reports. Needs the float64[n, n] distance matrix (sparse dot products); the mixed rows stay
    lazy for the robust aggregators here, FedAvg and the anomaly screen, so memory is
    O(n² + d + total nnz), never n×d (an inner that takes only ClientUpdates gets the n mixed
    rows materialised, each up to min(d, total nnz) values).
    """

    f: float = 0.2
    inner: AggregatorFactory = field(default_factory=lambda: Krum())

    def __post_init__(self) -> None:
        resolve_f(self.f, 1)
        if 0.5 < self.f < 1:
            # Allouah et al. need f < n/2. A fraction above one half asks NNM to tolerate a
            # majority of the reports, which floor(f·n) >= n/2 breaks in most rounds. f = 0.5
            # stays: floor(n/2) < n/2 whenever n is odd (measured per round).
            raise ValueError(
                f"NNM needs f < n/2, which a fraction f above 0.5 asks it to break; got "
                f"f={shown(self.f)} (give a fraction of at most 0.5 or a count)"
            )

    def create(self, size: int) -> _NNMProcess:
        return _NNMProcess(size, self.f, self.inner.create(size))


class _NNMProcess(_RowProcess):
    def __init__(self, size: int, f: float, inner: AggregationProcess) -> None:
        self.size, self.f, self.inner = size, f, inner

    def initialize(self) -> Any:
        return self.inner.initialize()

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        n = len(rows)
        f = resolve_f(self.f, n) if n else 0
        keep = max(1, n - f) if n else 0
        mix = np.zeros((n, n))
        if n:
            d2 = rows.sq_distances()
            # Ties broken by index so the mix is deterministic; self (distance 0) comes first.
            order = np.lexsort((np.broadcast_to(np.arange(n), (n, n)), d2), axis=1)[:, :keep]
            np.put_along_axis(mix, order, 1.0 / keep, axis=1)
        inner_out = forward_rows(
            self.inner, state, rows.mixed(mix, weights=rows.weights, labels=rows.labels)
        )
        meas: dict[str, Any] = {"f": f, "neighbours": keep}
        if n:
            # Allouah et al. need f < n/2; a fraction that resolved to 0 tolerates none.
            meas["guarantee_holds"] = 2 * f < n and not (0 < self.f < 1 and f == 0)
            meas.update(_fraction_meas(self.f))
        meas["inner"] = inner_out.measurements
        return AggregateOutput(inner_out.state, inner_out.result, meas)


@dataclass(frozen=True, slots=True)
class MomentumCosineFilter:
    """Drop reports that point against the server momentum, then aggregate the rest with `inner`.

    The reference is the server momentum m of past aggregates (m' = beta·m + (1 - beta)·result),
    which a screened round's attackers move only through `inner`'s result. A report y_i is kept
    when cos(y_i, m) > `min_cosine`. Honest deltas of consecutive rounds agree (on our MNIST runs
    their cosine to the previous aggregate is positive), while sign flip and IPM send the
    negative of honest progress, so once the reference is sound their cosine is negative
    whatever their number in a cohort. The reference is only as sound as the aggregates it is
    made of: round 1 is not screened, and on top-k reports 4 identical IPM reports of 10 can
    capture the geometric median (docs/robustness.md), leaving a reference that points
    against honest progress (see `max_drop` for how it is replaced). The idea is FLTrust's
    (Cao et al. 2021: trust by cosine to a reference update) with the server's own momentum as
    the reference instead of a root data set, as in Zeno++'s use of a stale reference (Xie et
    al. 2020).
    No reference yet (first round, or m = 0): everything is kept. Nothing kept: the round's
    result is zero (no step). A report of norm 0 has cosine 0 (dropped unless min_cosine < 0).
    An empty round (no reports) keeps, drops and distrusts nothing, leaves the momentum as it
    was and does not call `inner`, like the collusion screen.
    `max_drop`: if at least this fraction of a round's reports would be dropped, the
    reference is distrusted for the round: every report goes to `inner` (measurement
    `distrusted`). The first distrusted round after a trusted one leaves the momentum as it
    was, so one odd cohort (say an attacker majority) cannot bend the reference for the next;
    a second distrusted round in a row says the reference, not the cohorts, is off, and the
    momentum restarts from that round's result, (1 - beta)·result, as from round 1. A frozen
    momentum used to stay frozen: after a poisoned round 1 every later round was distrusted,
    attackers or not, and the screen was off for the run (helper-229). The state carries the
    count of distrusted rounds in a row as a third element while it is not 0 (a 2-tuple
    otherwise, as states written before the count). 1.0 turns the check off. Late in training
    honest cosines to the momentum fall to about zero, and a filter that drops most of a cohort can hand `inner` an
    attacker majority (on the MNIST CNN at 20% label flip it dropped 6 of 10 honest-leaning
    reports and the model fell from 94% to 22%). With the default 0.5 the filter never drops
    half a cohort or more: under the honest-majority assumption `inner` needs anyway, that
    many drops must include honest reports (a second CNN seed lost 7 pp when a reference bent
    by a distrusted round then dropped exactly the honest half), and the robust `inner` is the
    safer judge. Fewer drops can still leave an attacker majority among the kept reports when
    attackers are more than a quarter of the cohort and point where honest reports do
    (docs/robustness.md, "Edge cases").
    Memory: the float32[d] momentum plus one dot per report.
    """

    inner: AggregatorFactory = field(default_factory=GeometricMedian)
    min_cosine: float = 0.0
    beta: float = 0.5
    max_drop: float = 0.5

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_cosine < 1.0:
            raise ValueError(f"min_cosine must be in [-1, 1), got {shown(self.min_cosine)}")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"momentum beta must be in [0, 1), got {shown(self.beta)}")
        if not 0.0 < self.max_drop <= 1.0:
            # 0 would distrust the reference in every round (0 drops are "at least 0 of the
            # cohort"): the filter would keep everything, silently. AnomalyFilter refuses it too.
            raise ValueError(f"max_drop must be in (0, 1], got {shown(self.max_drop)}")

    def create(self, size: int) -> _MomentumCosineProcess:
        return _MomentumCosineProcess(
            size, self.inner.create(size), self.min_cosine, self.beta, self.max_drop
        )


class _MomentumCosineProcess(_RowProcess):
    def __init__(
        self,
        size: int,
        inner: AggregationProcess,
        min_cosine: float,
        beta: float,
        max_drop: float = 0.5,
    ) -> None:
        self.size, self.inner, self.min_cosine, self.beta = size, inner, min_cosine, beta
        self.max_drop = max_drop

    def initialize(self) -> Any:
        return (_zeros(self.size), self.inner.initialize())

    def next_rows(self, state: Any, rows: UpdateRows) -> AggregateOutput:
        # (momentum, inner state), plus the number of distrusted rounds in a row when the last
        # round was distrusted; states written before that count existed are the 2-tuple.
        if len(state) == 3:
            momentum, inner_state, in_a_row = state
            if type(in_a_row) is not int or in_a_row < 1:
                raise ValueError(
                    f"cosine filter state: distrusted rounds in a row must be an int >= 1, "
                    f"got {shown(in_a_row)}"
                )
        else:
            (momentum, inner_state), in_a_row = state, 0
        m = np.asarray(momentum, dtype=np.float64)
        if m.shape != (self.size,):
            raise ValueError(f"cosine filter state must hold float32[{self.size}]")
        n = len(rows)
        m_norm = float(np.linalg.norm(m))
        if n and m_norm > 0.0:
            norms = np.sqrt(np.maximum(rows.sq_norms(), 0.0))
            cos = rows.dots(m) / np.maximum(norms * m_norm, 1e-30)
            keep = [i for i in range(n) if cos[i] > self.min_cosine]
        else:
            cos = np.full(n, np.nan)
            keep = list(range(n))
        # n > 0: with no reports, 0 drops are not "at least max_drop of the cohort". Compared
        # exactly (`ceil_times`): the float 0.28·25 = 7.000000000000001 let 7 drops of 25 pass.
        distrusted = n > 0 and self.max_drop < 1.0 and n - len(keep) >= ceil_times(self.max_drop, n)
        if distrusted:
            keep = list(range(n))
        dropped = {rows.labels[i]: round(float(cos[i]), 4) for i in range(n) if i not in keep}
        if keep:
            inner_out = forward_rows(
                self.inner, inner_state, rows if len(keep) == n else rows.subset(keep)
            )
            result, inner_state, inner_meas = (
                inner_out.result,
                inner_out.state,
                inner_out.measurements,
            )
        else:
            result, inner_meas = _zeros(self.size), {}
        if n == 0 or (distrusted and in_a_row == 0):
            # An empty round, or the first distrusted round after a trusted one: the reference
            # is kept (the cohort may be the odd one, e.g. an attacker majority).
            new_m = np.asarray(momentum, dtype=np.float32)
        else:
            # A trusted round moves the momentum; a second distrusted round in a row says the
            # reference, not the cohorts, is off, so it restarts from this round's result as
            # from a zero momentum (as in round 1) and cannot stay stuck.
            base = 0.0 if distrusted else self.beta * m
            new_m = (base + (1.0 - self.beta) * result.astype(np.float64)).astype(np.float32)
        if n:
            in_a_row = in_a_row + 1 if distrusted else 0
        new_state = (new_m, inner_state, in_a_row) if in_a_row else (new_m, inner_state)
        return AggregateOutput(
            new_state,
            result,
            {"kept": len(keep), "dropped": dropped, "distrusted": distrusted, "inner": inner_meas},
        )
