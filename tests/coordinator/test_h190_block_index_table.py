"""The coordinate-block rules' index table is filled in place, not stacked from a list.

`_Base._blocks` built cut = int64[n, B + 1] (where each report's values start in each block) as
a list of n rows and then `np.stack`ed it: twice the table at the peak (61 MB for 2,000
reports over d = 10⁶). It is now preallocated once; the blocks are unchanged.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from coordinator.aggregators import UpdateRows, build_aggregator

from .test_h148_sparse_support import random_sparse_reports


def test_the_index_table_is_held_once_at_the_peak() -> None:
    # Prepare: 200 reports of 10 values over d = 10⁶ in blocks of 50 columns: the table is
    # int64[200, 20,001] = 32 MB, everything else small.
    n, d, width = 200, 1_000_000, 50
    rows = UpdateRows.from_client_updates(random_sparse_reports(n, d, 10, seed=0), d)
    table = 8 * n * (-(-d // width) + 1)
    # Execute: the table is built before the first block is yielded
    tracemalloc.start()
    try:
        blocks = rows._base._blocks(width, sent=True)
        next(blocks)
        _, peak = tracemalloc.get_traced_memory()
        blocks.close()
    finally:
        tracemalloc.stop()
    # Assert: before, about 2 · table
    assert table <= peak < 1.25 * table, f"peak {peak / 1e6:.1f} MB, table {table / 1e6:.1f} MB"


def test_blocks_are_the_reports_dense_values() -> None:
    # Prepare
    n, d = 7, 1_003
    ups = random_sparse_reports(n, d, 150, seed=1)
    rows = UpdateRows.from_client_updates(ups, d)
    dense = np.zeros((n, d), dtype=np.float32)
    sent = np.zeros((n, d), dtype=bool)
    for i, cu in enumerate(ups):
        dense[i, cu.update.indices] = cu.update.values
        sent[i, cu.update.indices] = True
    # Execute / Assert: every block, bit for bit, for several widths
    for elems in (7, 70, 700, 1 << 20):
        stops = []
        for start, stop, block, mask in rows.sent_blocks(elems):
            assert np.array_equal(block, dense[:, start:stop])
            assert np.array_equal(mask, sent[:, start:stop])
            stops.append(stop)
        assert stops[-1] == d
    # and a coordinate-block rule on them (median over 7 reports) is the dense median
    proc = build_aggregator("median").create(d)
    out = proc.next(proc.initialize(), ups)
    assert np.array_equal(out.result, np.median(dense, axis=0).astype(np.float32))
