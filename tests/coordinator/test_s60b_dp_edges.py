"""Edges of central DP that change the guarantee or the clip, pinned to independent figures:
`PrivacyAccountant.max_rounds` at a budget that one round count meets exactly (epsilons from
dp_accounting directly), its `limit`, the adaptive clip's count of unclipped reports (a
report of norm exactly C is unclipped, Andrew et al.'s b = [||u|| <= C]) and the noise stddev
when the mean divides by the number of reports (fixed-size sampling, no denominator)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import AdaptiveClip, ClientUpdate, DPMean
from coordinator.privacy import FixedSizeSampling, PoissonSampling, PrivacyAccountant

from .test_s60b_dp_budget_edges import DELTA, Q, Z, _rdp_epsilon


@pytest.mark.parametrize("rounds", [1, 2, 3, 4, 5, 8])
def test_max_rounds_counts_a_round_whose_epsilon_equals_the_budget(rounds: int) -> None:
    # Prepare: a budget of exactly that round count's epsilon (powers of two hit the doubling
    # search's bracket ends, the others its bisection).
    acc = PrivacyAccountant(Z, PoissonSampling(Q), "rdp")
    # Execute / Assert
    assert acc.max_rounds(_rdp_epsilon(rounds), DELTA) == rounds
    assert acc.max_rounds(_rdp_epsilon(rounds) * (1 - 1e-9), DELTA) == rounds - 1


@pytest.mark.parametrize("limit", [1, 2, 3, 6, 8])
def test_max_rounds_stops_at_its_limit(limit: int) -> None:
    # Prepare: a budget no small round count reaches.
    acc = PrivacyAccountant(Z, PoissonSampling(Q), "rdp")
    # Execute / Assert
    assert acc.max_rounds(1e6, DELTA, limit=limit) == limit


def _report(i: int, values: list[float]) -> ClientUpdate:
    return ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.array(values, np.float32)), 1.0)


def test_a_report_of_norm_exactly_the_clip_counts_as_unclipped() -> None:
    # Prepare: count noise far below one report (sigma_b = 0.01; z = 0.01 < 2 sigma_b), clip
    # C = 0.5. Norms: exactly 0.5 (unclipped), 0.3 (unclipped), 0.5000001 (clipped).
    dp = DPMean(
        0.01,
        clip=AdaptiveClip(initial=0.5, count_stddev=0.01),
        denominator=3.0,
        seed=1,
    )
    proc = dp.create(3)
    reports = [
        _report(0, [0.5, 0.0, 0.0]),
        _report(1, [0.0, 0.3, 0.0]),
        _report(2, [0.0, 0.0, 0.5000001]),
    ]
    assert [math.sqrt(r.update.squared_norm()) for r in reports][0] == 0.5
    # Execute
    out = proc.next(proc.initialize(), reports)
    # Assert: 2 of 3 unclipped; the noise moves the fraction by about 0.01 / 3.
    assert out.measurements["unclipped_fraction_noised"] == pytest.approx(2 / 3, abs=0.02)


def test_every_report_unclipped_reads_as_fraction_one() -> None:
    # Prepare: all five reports below C, denominator 5: (5 - 5/2 + noise) / 5 + 1/2 = 1.
    dp = DPMean(0.01, clip=AdaptiveClip(initial=1.0, count_stddev=0.01), denominator=5.0, seed=2)
    proc = dp.create(2)
    # Execute
    out = proc.next(proc.initialize(), [_report(i, [0.1, 0.2]) for i in range(5)])
    # Assert
    assert out.measurements["unclipped_fraction_noised"] == pytest.approx(1.0, abs=0.01)


def test_noise_over_the_report_count_has_stddev_z_c_over_n() -> None:
    # Prepare: fixed-size sampling without a denominator divides by the n reports; zero
    # reports, so the released mean is the noise over n alone.
    size, z, clip, n = 200_000, 1.3, 2.5, 4
    dp = DPMean(z, clip=clip, sampling=FixedSizeSampling(100, n), seed=7)
    proc = dp.create(size)
    zeros = [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.zeros(size, np.float32)), 1.0)
        for i in range(n)
    ]
    # Execute
    out = proc.next(proc.initialize(), zeros)
    # Assert: the stddev of the mean is z C / n (standard error of the estimate 0.16%).
    assert np.std(out.result.astype(np.float64)) == pytest.approx(z * clip / n, rel=0.01)
    assert out.measurements["noise_stddev"] == pytest.approx(z * clip / n, rel=1e-12)
    assert out.measurements["clients"] == n


def test_max_rounds_with_limit_zero_is_zero() -> None:
    # Prepare: a budget one round meets many times over.
    acc = PrivacyAccountant(Z, PoissonSampling(Q), "rdp")
    # Execute / Assert: capped at 0 rounds, not the search's floor of 1.
    assert acc.max_rounds(1e6, DELTA, limit=0) == 0


@pytest.mark.parametrize("limit", [-1, -100, 2.5, True, "3"])
def test_max_rounds_refuses_a_limit_that_is_not_a_round_count(limit: object) -> None:
    acc = PrivacyAccountant(Z, PoissonSampling(Q), "rdp")
    with pytest.raises(ValueError, match="limit must be a non-negative round count"):
        acc.max_rounds(1e6, DELTA, limit=limit)  # type: ignore[arg-type]
