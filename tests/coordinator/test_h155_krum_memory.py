"""Memory of Krum, multi-Krum and NNM over Krum when n is large against the reports' size.

The Gram matrix is made symmetric with four float64[n, n] arrays alive at once, and the
distances and scores take more n×n arrays after it, so the n² term is about 32·n² at the
peak, where docs/robustness.md's Krum row said 8·n² (16·d + 8·n² + 48·N). The bound checked
here is the corrected row, 16·d + 48·N + 40·n², and nnm's corrected row over it (inner's bound
+ 8·d + 16·N + 48·n² + 24·block, as in test_h155_premix_memory). With the old row as the
bound, Krum failed first (34.5 MB > 12.9 MB). Measured as test_h148_sparse_support measures.
"""

from __future__ import annotations

import numpy as np

from coordinator.aggregators import Krum, NearestNeighborMixing
from coordinator.aggregators._robust import DEFAULT_BLOCK_ELEMS
from tests.coordinator.test_h148_sparse_support import peak_of, reports


def test_krum_and_nnm_stay_within_their_rows_for_a_thousand_small_reports() -> None:
    # Prepare: 1,000 reports of about 100 values over d = 2,000.
    n, d = 1_000, 2_000
    rng = np.random.default_rng(13)
    values = rng.normal(size=(n, d)).astype(np.float32)
    sent = rng.random((n, d)) < 0.05
    updates = reports(values, sent)
    nnz = int(sent.sum())
    krum_row = 16 * d + 48 * nnz + 40 * n * n
    nnm_row = krum_row + 8 * d + 16 * nnz + 48 * n * n + 24 * DEFAULT_BLOCK_ELEMS
    for factory, bound in (
        (Krum(0.1), krum_row),
        (Krum(0.1, m=None), krum_row),
        (NearestNeighborMixing(0.1, inner=Krum(0.1)), nnm_row),
    ):
        # Execute
        peak, out = peak_of(factory, d, updates)
        # Assert
        assert peak < bound, f"{factory}: peak {peak} bytes > bound {bound}"
        assert np.any(out.result != 0.0)
