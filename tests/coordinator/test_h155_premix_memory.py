"""Memory of bucketing and nearest-neighbour mixing in front of a coordinate-block rule.

The mixed rows stay lazy: each coordinate block of the n reports (float32) is multiplied by
the float64 mix matrix, which takes a float64 copy of the block and a float64 product before
the inner rule gets its float32 block; with `support=1` the reports' mask is mixed too, through
a float32 copy of the mix's pattern (n²/s values) and of the mask. NNM also computes the Gram
matrix from the reports (a float64[d] scratch, 16 bytes per stored value while it runs, and a
few n×n arrays) that a block rule's own bound does not count. The bounds checked here:

    bucket:s + inner   inner's bound + 16·n²/s + 24·block
    nnm + inner        inner's bound + 8·d + 16·N + 48·n² + 24·block

with inner's bound 8·d + 24·N + 16·block for trimmed_mean and median. docs/robustness.md's
rows said inner's bound + 8·n²/s and inner's bound + 16·n², which every case here exceeds.
Measured as tests/coordinator/test_h148_sparse_support.py measures.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregators import Bucketing, CoordinateMedian, NearestNeighborMixing, TrimmedMean
from tests.coordinator.test_h148_sparse_support import peak_of, reference, reports


def block_rule(kind: str, block: int) -> TrimmedMean | CoordinateMedian:
    if kind == "median":
        return CoordinateMedian(block_elems=block)
    return TrimmedMean(0.2, block_elems=block, support=kind == "support")


@pytest.mark.parametrize(
    ("pre", "inner", "n", "d", "block", "density"),
    [
        ("bucket:2", "trimmed", 100, 20_000, 1 << 20, 1.0),  # dense: the float64 block copies
        ("bucket:1", "median", 40, 50_000, 1 << 19, 1.0),
        ("bucket:2", "support", 1_500, 500, 1 << 16, 0.2),  # large n: the mask's mix pattern
        ("nnm", "trimmed", 40, 50_000, 1 << 19, 1.0),  # the Gram matrix's scratch
        ("nnm", "support", 1_000, 2_000, 1 << 18, 0.05),  # ... and its n×n arrays
    ],
)
def test_pre_aggregator_over_a_block_rule_stays_within_its_row(
    pre: str, inner: str, n: int, d: int, block: int, density: float
) -> None:
    # Prepare
    rng = np.random.default_rng(n + d)
    values = rng.normal(size=(n, d)).astype(np.float32)
    sent = rng.random((n, d)) < density
    updates = reports(values, sent)
    nnz = int(sent.sum())
    inner_bound = 8 * d + 24 * nnz + 16 * block
    if pre == "nnm":
        factory: Bucketing | NearestNeighborMixing = NearestNeighborMixing(
            0.1, inner=block_rule(inner, block)
        )
        bound = inner_bound + 8 * d + 16 * nnz + 48 * n * n + 24 * block
    else:
        s = int(pre.split(":")[1])
        factory = Bucketing(s, inner=block_rule(inner, block), seed=7)
        bound = inner_bound + 16 * n * n / s + 24 * block
    # Execute
    peak, out = peak_of(factory, d, updates)
    # Assert
    assert peak < bound, f"{pre}+{inner}: peak {peak} bytes > bound {bound}"
    assert np.all(np.isfinite(out.result)) and np.any(out.result != 0.0)
    if pre == "bucket:1" or inner != "support":
        return
    # The support rule saw its mixed rows' mask: some coordinates were supported.
    assert out.measurements["inner"]["supported_coords"] > 0


def test_bucket_of_one_is_the_inner_rule_on_the_reports() -> None:
    # bucket:1 mixes with a permutation: the same coordinate blocks, reordered, so the support
    # rule's result is its reference on the reports themselves.
    rng = np.random.default_rng(11)
    values = rng.normal(size=(30, 200)).astype(np.float32)
    sent = rng.random((30, 200)) < 0.4
    factory = Bucketing(1, inner=TrimmedMean(0.1, block_elems=1 << 10, support=True), seed=3)
    proc = factory.create(200)
    out = proc.next(proc.initialize(), reports(values, sent))
    np.testing.assert_allclose(out.result, reference(values, sent, 0.1), rtol=1e-6, atol=1e-7)
