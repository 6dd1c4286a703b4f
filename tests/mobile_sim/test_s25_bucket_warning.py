"""`plume sim`'s robustness warning names a bucketing round that left fewer than 3 bucket means
(`bucket:s` measures `guarantee_holds: false` then, a740860): before, it fell through to the
Krum wording ("Krum with f=None")."""

from __future__ import annotations

from types import SimpleNamespace

from mobile_sim.report import robust_guarantee_warning


def _result(measurements: list[dict[str, object]]) -> SimpleNamespace:
    records = [SimpleNamespace(round=i + 1, measurements=m) for i, m in enumerate(measurements)]
    return SimpleNamespace(records=records)


def test_a_bucketing_round_with_two_bucket_means_is_named() -> None:
    # Prepare: round 2 had 4 reports in buckets of 2 (two means), round 1 enough
    ok = {"buckets": 3, "bucket_size": 2, "guarantee_holds": True, "inner": {}}
    short = {"buckets": 2, "bucket_size": 2, "guarantee_holds": False, "clients": 4, "inner": {}}

    # Execute
    line = robust_guarantee_warning(_result([ok, short]))  # type: ignore[arg-type]

    # Assert
    assert line is not None
    assert "in 1 of 2 rounds" in line
    assert "bucket:2 left 2 bucket means, fewer than 3: their mean" in line
    assert "Krum" not in line
    assert line.endswith("raise --per-round or lower the bucket size")
