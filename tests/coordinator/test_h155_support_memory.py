"""Memory of `trimmed_mean:BETA,support=1` when most coordinates are supported.

docs/robustness.md gives the trimmed mean, with or without `support=1`, the bound
8·d + 24·N + 16·block bytes beyond the inputs. test_h148's memory test checks the looser bound
every rule shares, on reports with about one sender per coordinate (nothing to copy). Here
every coordinate is supported (dense reports, or 90% dense with the threshold met), so the
support rule's copy of the supported columns is a whole block; measured as test_h148 measures.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregators import CoordinateMedian, TrimmedMean
from tests.coordinator.test_h148_sparse_support import peak_of, reference, reports


@pytest.mark.parametrize(
    ("n", "d", "block", "density"),
    [
        (100, 20_000, 1 << 20, 1.0),  # every report sends every coordinate: 2 blocks
        (40, 50_000, 1 << 19, 0.9),  # ~36 senders per coordinate, threshold 17: 4 blocks
    ],
)
def test_support_rule_stays_within_the_trimmed_mean_row_of_the_docs(
    n: int, d: int, block: int, density: float
) -> None:
    # Prepare
    rng = np.random.default_rng(n + d)
    values = rng.normal(size=(n, d)).astype(np.float32)
    sent = rng.random((n, d)) < density
    updates = reports(values, sent)
    nnz = int(sent.sum())
    bound = 8 * d + 24 * nnz + 16 * block
    peaks, results = {}, {}
    for support in (False, True):
        # Execute
        peaks[support], out = peak_of(
            TrimmedMean(0.2, block_elems=block, support=support), d, updates
        )
        results[support] = out.result
    # Assert: every coordinate was supported, and both rules are within the row's bound.
    assert out.measurements["supported_coords"] == d
    assert peaks[False] < bound, f"plain: peak {peaks[False]} bytes > stated bound {bound}"
    assert peaks[True] < bound, f"support=1: peak {peaks[True]} bytes > stated bound {bound}"
    np.testing.assert_allclose(results[True], reference(values, sent, 0.2), rtol=1e-6, atol=1e-7)
    if density == 1.0:
        assert results[True].tobytes() == results[False].tobytes()


def test_block_rules_stay_within_their_row_when_the_block_is_small() -> None:
    # Prepare: 20 dense reports, d = 200,000 (N = 4,000,000 values), block 2^16 scalars. The
    # reports' concatenation takes 24·N bytes (indices, float64 values, row numbers); the
    # 16·block of the row leaves no room for another byte per value.
    n, d, block = 20, 200_000, 1 << 16
    rng = np.random.default_rng(12)
    values = rng.normal(size=(n, d)).astype(np.float32)
    updates = reports(values, np.ones((n, d), dtype=bool))
    bound = 8 * d + 24 * n * d + 16 * block
    for factory in (
        TrimmedMean(0.2, block_elems=block),
        TrimmedMean(0.2, block_elems=block, support=True),
        CoordinateMedian(block_elems=block),
    ):
        # Execute
        peak, _ = peak_of(factory, d, updates)
        # Assert
        assert peak < bound, f"{factory}: peak {peak} bytes > stated bound {bound}"
