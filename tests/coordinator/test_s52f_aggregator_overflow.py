"""An aggregator count or number past float's range is a clear refusal, never OverflowError.

`krum:f=1e308` builds (a count f is any whole number, as krum:f=1e300 is), but the cohort check
wrote its bound 2f + 2 (about 2e308, an int past float's range) through `_num`, whose
`math.isfinite` of that int raised OverflowError: `plume sim --secure --group-aggregator
krum:f=1e308` ended in a traceback, and the service needed its own catch. The check now says
"f=1e+308 needs more than 2e+308 reports". The same held for the Python API: `Clip(norm=10**400)`,
`DPMean(noise_multiplier=10**400)`, `AdaptiveClip(initial=10**400)`, `GeometricMedian(nu=...)`,
`CenteredClipping(tau=...)` raised OverflowError, `Krum(f=10**400)`, `FedAvg(max_weight=...)`
and `RobustLearningRate(theta=...)` numpy's TypeError, and `Bucketing(bucket_size=10**400)`
OverflowError; each is now its parameter's ValueError, or (a whole count) built and refused
readably by the cohort check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator.aggregators import (
    AdaptiveClip,
    Bucketing,
    CenteredClipping,
    Clip,
    DPMean,
    FedAvg,
    GeometricMedian,
    Krum,
    NearestNeighborMixing,
    RobustLearningRate,
    build_aggregator,
)
from coordinator.aggregators._robust import cohort_refusal
from coordinator.cli import main

HUGE = 10**400  # an int no float can hold


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("krum:f=1e308", "krum: Krum needs n > 2f + 2, so f=1e+308 needs more than 2e+308 reports"),
        (
            "multikrum:f=1e308",
            "multikrum: Krum needs n > 2f + 2, so f=1e+308 needs more than 2e+308",
        ),
        (
            "nnm:f=1e308+median",
            "nnm: NNM needs f < n/2, so f=1e+308 needs more than 2e+308 reports",
        ),
        ("nnm:f=1.7e308+krum:f=1", "so f=1.7e+308 needs more than 3.4e+308 reports"),
    ],
)
def test_a_count_whose_bound_leaves_float_range_is_refused_readably(spec: str, says: str) -> None:
    # Execute
    reason = cohort_refusal(build_aggregator(spec), 20)
    # Assert
    assert reason is not None and says in reason, reason
    assert "a full round has 20 (clients_per_round)" in reason
    assert not re.search(r"\d{16,}", reason), reason


def test_plume_sim_group_aggregator_with_such_a_count_is_one_usage_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: 9 devices in groups of 3 give 3 group sums; f=1e308 can never be met.
    argv = [
        "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "40", "--rounds",
        "1", "--local-epochs", "1", "--no-progress", "--secure", "--per-round", "9",
        "--group-size", "3", "--group-aggregator", "krum:f=1e308",
        "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    # Execute
    code = main(argv)
    # Assert: exit 2, one line, nothing written
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("plume sim: error: --group-aggregator 'krum:f=1e308': krum: Krum needs")
    assert "f=1e+308 needs more than 2e+308 group sums" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda: Clip(norm=HUGE), "clip norm must be finite and > 0"),
        (lambda: DPMean(noise_multiplier=HUGE), "noise multiplier must be finite and > 0"),
        (lambda: DPMean(noise_multiplier=1.0, clip=HUGE), "clip norm must be finite and > 0"),
        (
            lambda: DPMean(noise_multiplier=1.0, denominator=HUGE),
            "denominator (denom=) must be finite and > 0",
        ),
        (lambda: AdaptiveClip(initial=HUGE), "initial clip must be finite and > 0"),
        (lambda: AdaptiveClip(maximum=HUGE), "the adaptive clip's ceiling must be finite"),
        (lambda: AdaptiveClip(learning_rate=HUGE), "learning_rate must be finite and > 0"),
        (lambda: GeometricMedian(nu=HUGE), "geometric median nu must be finite and > 0"),
        (lambda: GeometricMedian(tol=HUGE), "geometric median tol must be finite and >= 0"),
        (lambda: CenteredClipping(tau=HUGE), "centered clipping tau must be finite and > 0"),
        (lambda: CenteredClipping(iterations=HUGE), "centered clipping iterations must be at most"),
        (lambda: FedAvg(max_weight=HUGE), "max_weight must be a positive finite number"),
        # (it said "must be > 0" of a positive number until helper-53c: the trouble is its size)
        (lambda: RobustLearningRate(theta=HUGE), "RLR theta 1e+400 is past a float's range"),
    ],
    ids=[
        "clip",
        "dp-z",
        "dp-clip",
        "dp-denom",
        "aclip-initial",
        "aclip-max",
        "aclip-lr",
        "geomed-nu",
        "geomed-tol",
        "cclip-tau",
        "cclip-iters",
        "fedavg-max-weight",
        "rlr-theta",
    ],  # fmt: skip
)
def test_a_python_api_number_past_float_range_is_its_value_error(
    build: Callable[[], Any], says: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        build()


@pytest.mark.parametrize(
    ("factory", "says"),
    [
        (lambda: Krum(f=HUGE), "so f=1e+400 needs more than 2e+400 reports"),
        (lambda: NearestNeighborMixing(f=HUGE), "so f=1e+400 needs more than 2e+400 reports"),
        (lambda: Krum(f=2**64), "so f=1.84467e+19 needs more than 3.68935e+19 reports"),
        (lambda: Bucketing(bucket_size=HUGE), "bucket: s=1e+400 leaves 1 bucket mean"),
    ],
    ids=["krum", "nnm", "krum-past-int64", "bucket"],
)
def test_a_whole_count_of_any_size_builds_and_is_refused_by_the_cohort_check(
    factory: Callable[[], Any], says: str
) -> None:
    reason = cohort_refusal(factory(), 10)
    assert reason is not None and says in reason, reason
    assert not re.search(r"\d{16,}", reason), reason
