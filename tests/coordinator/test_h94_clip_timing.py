"""DPMean clips every report through the same arithmetic, clipped or not.

`clip_update` returned a report under the clip as it was and scaled (float64 copy, product,
float32 copy, norm check) only those above it, so a round's aggregation time grew with the
number of clipped reports: the statistic DPMean keeps out of its measurements. That time is
public (`plume_aggregate_seconds` on the unauthenticated /metrics, and when the next version
appears). Now every report is scaled by min(1, C / norm); the factor 1 leaves its values as
they were.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, DPMean, _dp
from coordinator.aggregators._clip import clip_update
from coordinator.privacy import FixedSizeSampling


def _reports(scales: list[float]) -> list[ClientUpdate]:
    rng = np.random.default_rng(7)
    out = []
    for i, s in enumerate(scales):
        v = (rng.standard_normal(50) * s).astype(np.float32)
        out.append(ClientUpdate(f"d{i}", SparseUpdate.from_dense(v), 1.0))
    return out


def test_every_report_takes_the_scaling_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: two reports far under the clip, two far above it; record what clipping returns
    returned: list[tuple[SparseUpdate, SparseUpdate]] = []

    def recording(update: SparseUpdate, clip: float, **kw: Any) -> SparseUpdate:
        out = clip_update(update, clip, **kw)
        returned.append((update, out))
        return out

    monkeypatch.setattr(_dp, "clip_update", recording)
    dp = DPMean(1.0, clip=1.0, sampling=FixedSizeSampling(100, 4), seed=0)
    proc = dp.create(50)
    # Execute
    proc.next(proc.initialize(), _reports([1e-3, 1e-3, 10.0, 10.0]))
    # Assert: before, the two small reports came back as the same objects (no scaling work)
    assert len(returned) == 4
    for before, after in returned:
        assert after is not before and after.values is not before.values
        assert np.sqrt(after.squared_norm()) <= 1.0


@pytest.mark.parametrize("scale", [0.0, 1e-3, 0.05])
def test_the_factor_one_leaves_an_unclipped_report_unchanged(scale: float) -> None:
    u = _reports([scale])[0].update
    out = clip_update(u, 1.0, always_scale=True)
    assert np.array_equal(out.values, u.values) and np.array_equal(out.indices, u.indices)
    assert out.values.dtype == np.float32
