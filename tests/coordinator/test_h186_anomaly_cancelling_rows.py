"""The anomaly screen behind a pre-aggregator measures a mixed row on the row itself.

0061670 took the norms and cosines of lazily mixed rows (bucket means, NNM mixes) from their
Gram entries: ‖y‖² = Σ c_j c_k <x_j, x_k> and <y, a> = Σ c_j <x_j, a>. When a row sums a
report and its near negation (two colluders in one bucket, ~1e6 per coordinate), both are
differences of huge float64 numbers and lose every digit: helper-185's case
(/work/notes/s20/h185/anomaly_cancel.py) measured a bucket row of norm 0.0215 and cosine
0.99997 (materialised) as norm 0 and cosine 0, and rejected it, so colluders could choose
rejections and the max_drop distrust switch. Summed rows are now measured one dense row at a
time, as the materialised path does; these tests compare the two.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    AggregateOutput,
    ClientUpdate,
    FedAvg,
    GeometricMedian,
    UpdateRows,
    build_aggregator,
)
from coordinator.anomaly import AnomalyFilter


def _cu(name: str, v: np.ndarray) -> ClientUpdate:
    idx = np.flatnonzero(v).astype(np.int64)
    return ClientUpdate(name, SparseUpdate(idx, v[idx].astype(np.float32), v.shape[0]), 1.0)


def cancelling_rows(*, overlap: bool, pairs: int = 1, honest: int = 4) -> UpdateRows:
    """`pairs` bucket rows, each the mean of `big` and `-big + noise`, then `honest` rows.

    The honest direction lives on 5 coordinates; `noise` points along it. With overlap, `big`
    (~1e6 per coordinate) covers those 5 coordinates too, so the Gram dot products with the
    aggregate cancel as well as the norms.
    """
    d = 1000
    rng = np.random.default_rng(0)
    base = np.zeros(d, np.float32)
    base[:5] = rng.normal(size=5)
    ups = []
    for p in range(pairs):
        big = (rng.normal(size=d) * 1e6).astype(np.float32)
        if not overlap:
            big[:5] = 0.0
        noise = np.zeros(d, np.float32)
        noise[:5] = base[:5] * 0.05
        ups += [_cu(f"a{p}", big), _cu(f"b{p}", -big + noise)]
    for i in range(honest):
        h = base.copy()
        h[:5] += 0.01 * rng.normal(size=5).astype(np.float32)
        ups.append(_cu(f"h{i}", h))
    rows = UpdateRows.from_client_updates(ups, d)
    mix = np.zeros((pairs + honest, 2 * pairs + honest))
    for p in range(pairs):
        mix[p, 2 * p] = mix[p, 2 * p + 1] = 0.5
    for i in range(honest):
        mix[pairs + i, 2 * pairs + i] = 1.0
    labels = [f"bucket-{p}" for p in range(pairs)] + [f"h{i}" for i in range(honest)]
    return rows.mixed(mix, weights=[2.0] * pairs + [1.0] * honest, labels=labels)


def _lazy_and_eager(screen: AnomalyFilter, rows: UpdateRows) -> tuple[Any, Any]:
    proc = screen.create(rows.size)
    lazy = proc.next_rows(proc.initialize(), rows)
    eager = proc.next(proc.initialize(), rows.materialize())
    return lazy, eager


@pytest.mark.parametrize("overlap", [False, True], ids=["reviewer", "overlapping"])
def test_a_bucket_of_a_report_and_its_near_negation_is_measured_as_materialised(
    overlap: bool,
) -> None:
    # Prepare: helper-185's case (and big on the honest coordinates too).
    rows = cancelling_rows(overlap=overlap)
    screen = AnomalyFilter(FedAvg(), min_cosine=0.5, max_drop=1.0)
    # Execute
    lazy, eager = _lazy_and_eager(screen, rows)
    # Assert: the bucket row keeps its norm and cosine (0 and rejected before), the screen
    # decides and aggregates exactly as on the materialised rows.
    lm, em = lazy.measurements, eager.measurements
    assert em["rejected"] == {}
    assert lm["rejected"] == em["rejected"]
    assert 0.02 < lm["norms"]["bucket-0"] < 0.04  # the Gram entries give 0 (below 0.01)
    # UpdateRows itself now measures a summed row on the row (44a9656; its Gram entries gave
    # below 0.01 here), so its norm and the screen's agree.
    assert float(np.sqrt(rows.sq_norms()[0])) == pytest.approx(lm["norms"]["bucket-0"], rel=1e-6)
    # 0.99998 in the reviewer's case; with big on the honest coordinates, float32 rounding of
    # -big + noise at 1e6 leaves little of the noise (0.75).
    assert lm["cosines"]["bucket-0"] > (0.7 if overlap else 0.9999)
    assert lm["norms"] == em["norms"]
    assert lm["cosines"] == pytest.approx(em["cosines"], rel=0, abs=1e-12)
    np.testing.assert_array_equal(lazy.result, eager.result)


def test_colluding_pairs_cannot_flip_the_distrust_switch() -> None:
    # Prepare: three bucket rows of cancelling pairs and two honest rows. Measured as 0 from
    # the Gram entries, the three rows were 3 of 5 below min_cosine: the aggregate was
    # distrusted and the reports screened against their geometric median.
    rows = cancelling_rows(overlap=True, pairs=3, honest=2)
    screen = AnomalyFilter(FedAvg(), min_cosine=0.5, max_drop=0.5)
    # Execute
    lazy, eager = _lazy_and_eager(screen, rows)
    # Assert
    assert eager.measurements["cosine_distrusted"] is False
    assert lazy.measurements["cosine_distrusted"] is False
    assert lazy.measurements["rejected"] == eager.measurements["rejected"] == {}
    np.testing.assert_array_equal(lazy.result, eager.result)


def test_a_max_norm_screen_sees_the_bucket_rows_true_norm() -> None:
    # A bucket row of norm ~0.02 is not 0: max_norm_ratio against the median sees it as the
    # materialised path does (0 would pull the median down and reject honest rows).
    rows = cancelling_rows(overlap=True, pairs=3, honest=2)
    screen = AnomalyFilter(FedAvg(), max_norm_ratio=1.5)
    lazy, eager = _lazy_and_eager(screen, rows)
    assert lazy.measurements["rejected"] == eager.measurements["rejected"]
    assert lazy.measurements["norms"] == eager.measurements["norms"]


# --- lazy vs materialised through the specs, on random rounds -----------------------------


@dataclasses.dataclass(frozen=True)
class _Eager:
    """Factory wrapper whose process has no next_rows: forward_rows materialises the rows."""

    inner: Any

    def create(self, size: int) -> _EagerProcess:
        return _EagerProcess(self.inner.create(size))


class _EagerProcess:
    def __init__(self, process: Any) -> None:
        self.process = process
        self.seen: list[ClientUpdate] = []

    def initialize(self) -> Any:
        return self.process.initialize()

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput:
        self.seen = list(updates)
        out: AggregateOutput = self.process.next(state, updates)
        return out


def _inner_eager(process: Any) -> _EagerProcess:
    while not isinstance(process, _EagerProcess):
        process = process.inner
    return process


def _median_cosine_tolerance(seen: list[ClientUpdate], kept: Sequence[str], size: int) -> float:
    """How far the materialised rows' float32 rounding can move the median cosines.

    The materialised screen takes the geometric median of the rows rounded to float32; the
    lazy one of the exact rows (their measured squared norms and dot products). Rounding moves
    each row by up to 6e-8 of its norm, so the reference z by up to 6e-8 · max ||y_i|| and a
    cosine by about twice that over ||z||: where huge rows surround a small z (a report next
    to its near negation in an NNM mix), that is the materialised side's error: the lazy side
    measures the exact rows.
    """
    rows = [cu for cu in seen if cu.device_id in kept]
    geomed = GeometricMedian().create(size)
    z = float(np.linalg.norm(geomed.next(geomed.initialize(), rows).result))
    biggest = max(math.sqrt(cu.update.squared_norm()) for cu in rows)
    return 1e-5 + 1e-7 * biggest / max(z, 1e-30)


def _anomaly_measurements(meas: dict[str, Any]) -> dict[str, Any]:
    while "cosine_distrusted" not in meas:
        meas = meas["inner"]
    return meas


def random_round(rng: np.random.Generator) -> list[ClientUpdate]:
    """Honest reports around a direction, sparse, with colluding cancelling pairs and outliers.

    A pair is `big` (1e4 to 1e7 per coordinate) and `-big + noise` on the same coordinates:
    where they share a bucket (or an NNM mix), the row nearly cancels.
    """
    n = int(rng.integers(6, 15))
    d = int(rng.integers(40, 300))
    direction = rng.normal(size=d)
    vecs: list[tuple[np.ndarray, np.ndarray]] = []
    while len(vecs) < n:
        kind = rng.random()
        mask = rng.random(d) < rng.uniform(0.3, 1.0)
        if kind < 0.4 and len(vecs) + 2 <= n:
            big = rng.normal(size=d) * 10.0 ** rng.uniform(4, 7)
            vecs += [(big, mask), (-big + 0.05 * direction * rng.normal(), mask)]
        elif kind < 0.5:
            vecs.append((-rng.uniform(1, 30) * direction + rng.normal(size=d), mask))
        else:
            vecs.append((direction + rng.uniform(0.2, 2.0) * rng.normal(size=d), mask))
    ups = []
    for i, (v, mask) in enumerate(vecs):
        idx = np.flatnonzero(mask).astype(np.int64)
        vals = v[idx].astype(np.float32)
        ups.append(ClientUpdate(f"d{i:02d}", SparseUpdate(idx, vals, d), float(rng.integers(1, 9))))
    return ups


SPECS = [
    "bucket:2,seed={seed}+anomaly:min_cos={cos}+fedavg",
    "bucket:3,seed={seed}+anomaly:min_cos={cos},max_drop=0.3+fedavg",
    "bucket:2,seed={seed}+anomaly:norm_ratio=1.5,min_cos={cos}+fedavg",
    "nnm:f=1+anomaly:min_cos={cos}+fedavg",
    "nnm:f=2+anomaly:min_cos={cos},max_drop=0.2+fedavg",
    "nnm:f=1+anomaly:norm_ratio=1.2,min_cos={cos},max_drop=0.9+fedavg",
    "normbound:3+anomaly:min_cos={cos}+fedavg",
    "normbound:3+anomaly:max_norm=2.9,min_cos={cos},max_drop=0.3+fedavg",
    "bucket:2,seed={seed}+normbound:3+anomaly:min_cos={cos}+fedavg",
]


@pytest.mark.parametrize("template", SPECS)
def test_lazy_screen_decides_as_the_materialised_screen_on_random_rounds(template: str) -> None:
    rng = np.random.default_rng(SPECS.index(template))
    rounds_with_rejections = 0
    for trial in range(12):
        ups = random_round(rng)
        d = ups[0].update.size
        spec = template.format(seed=trial, cos=round(float(rng.uniform(-0.2, 0.8)), 3))
        lazy_factory: Any = build_aggregator(spec)
        eager_factory = dataclasses.replace(lazy_factory, inner=_Eager(lazy_factory.inner))
        lazy_proc: Any = lazy_factory.create(d)
        eager_proc: Any = eager_factory.create(d)
        if spec.startswith("normbound"):
            # Called with ClientUpdates, normbound clips them eagerly; as the inner of another
            # pre-aggregator it gets rows and hands the screen scaled rows.
            rows = UpdateRows.from_client_updates(ups, d)
            lazy = lazy_proc.next_rows(lazy_proc.initialize(), rows)
            eager = eager_proc.next_rows(eager_proc.initialize(), rows)
        else:
            lazy = lazy_proc.next(lazy_proc.initialize(), ups)
            eager = eager_proc.next(eager_proc.initialize(), ups)
        lm = _anomaly_measurements(lazy.measurements)
        em = _anomaly_measurements(eager.measurements)
        seen = _inner_eager(eager_proc).seen
        where = f"{spec} trial {trial}"
        assert lm["rejected"] == em["rejected"], where
        assert lm["cosine_distrusted"] == em["cosine_distrusted"], where
        rounds_with_rejections += bool(lm["rejected"])
        tol = {"norms": 0.0, "cosines": 1e-6}
        if em["median_cosines"]:
            tol["median_cosines"] = _median_cosine_tolerance(seen, list(em["median_cosines"]), d)
        for key, abs_tol in tol.items():
            assert lm[key].keys() == em[key].keys(), (where, key)
            for dev, value in lm[key].items():
                assert value == pytest.approx(em[key][dev], rel=1e-6, abs=abs_tol), (where, key)
        scale = max(1.0, float(np.max(np.abs(eager.result))))
        np.testing.assert_allclose(lazy.result, eager.result, rtol=1e-5, atol=1e-6 * scale)
    assert rounds_with_rejections >= 6  # the screen decided something in most rounds
