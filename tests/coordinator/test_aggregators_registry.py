"""build_aggregator: the spec grammar, nesting order, and clear errors."""

from __future__ import annotations

import math

import pytest

from coordinator.aggregators import (
    DEFAULT_ROBUST,
    AdaptiveClip,
    AggregatorSpecError,
    Bucketing,
    CenteredClipping,
    Clip,
    CoordinateMedian,
    DPMean,
    FedAvg,
    GeometricMedian,
    Krum,
    NearestNeighborMixing,
    TrimmedMean,
    build_aggregator,
)
from coordinator.aggregators._robust import MomentumCosineFilter, RobustLearningRate
from coordinator.anomaly import AnomalyFilter
from coordinator.privacy import FixedSizeSampling, PoissonSampling


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fedavg", FedAvg()),
        ("mean:uniform=1", FedAvg(uniform=True)),
        ("fedavg:max_weight=500", FedAvg(max_weight=500.0)),
        ("median", CoordinateMedian()),
        ("trimmed_mean:0.1", TrimmedMean(0.1)),
        ("trimmed_mean:beta=0.2", TrimmedMean(0.2)),
        ("krum:f=2", Krum(f=2, m=1)),
        ("multikrum:f=2,m=5", Krum(f=2, m=5)),
        ("multikrum", Krum(f=0.2, m=None)),
        ("geomed", GeometricMedian()),
        ("cclip:tau=1,beta=0.9", CenteredClipping(1.0, 0.9)),
        ("cclip:tau=auto,beta=0,iters=3", CenteredClipping(None, 0.0, 3)),
        ("rlr", RobustLearningRate(2.0, low_lr=-1.0)),
        ("rlr:theta=0.3,low_lr=0", RobustLearningRate(0.3, low_lr=0.0)),
        ("cosfilter+geomed", MomentumCosineFilter(GeometricMedian(), 0.0, 0.5)),
        ("cosfilter:0.1,beta=0.9+median", MomentumCosineFilter(CoordinateMedian(), 0.1, 0.9)),
        ("normbound:5+fedavg", Clip(5.0, inner=FedAvg())),
        ("normbound:5", Clip(5.0, inner=FedAvg())),
        ("bucket:2+median", Bucketing(2, inner=CoordinateMedian())),
        ("nnm+krum", NearestNeighborMixing(0.2, inner=Krum())),
        ("nnm:f=2+krum:f=2", NearestNeighborMixing(2, inner=Krum(f=2))),
        (
            "normbound:q=0.5,init=0.3+bucket:3+geomed",
            Clip(AdaptiveClip(0.3, 0.5), inner=Bucketing(3, inner=GeometricMedian())),
        ),
        ("dp:clip=1,z=1.0+fedavg", DPMean(1.0, clip=1.0, inner=FedAvg())),
        ("dp:clip=1,z=1.0", DPMean(1.0, clip=1.0, inner=FedAvg(uniform=True))),
        (
            "dp:clip=0.5,z=0.8,q=0.01,denom=10,delta=1e-6,eps=8,seed=3+fedavg",
            DPMean(
                0.8,
                clip=0.5,
                inner=FedAvg(),
                denominator=10.0,
                sampling=PoissonSampling(0.01),
                delta=1e-6,
                epsilon_budget=8.0,
                seed=3,
            ),
        ),
        (
            "dp:z=2,population=1000,sample=50,quantile=0.5,count_std=5+fedavg",
            DPMean(
                2.0,
                clip=AdaptiveClip(1.0, 0.5, 0.2, 5.0),
                inner=FedAvg(),
                sampling=FixedSizeSampling(1000, 50),
            ),
        ),
        (
            "anomaly:min_cos=0,norm_ratio=3+median",
            AnomalyFilter(CoordinateMedian(), max_norm_ratio=3.0, min_cosine=0.0),
        ),
    ],
)
def test_specs_build_the_expected_factories(spec: str, expected: object) -> None:
    assert build_aggregator(spec) == expected


def test_default_robust_spec_builds() -> None:
    assert build_aggregator(DEFAULT_ROBUST) == MomentumCosineFilter(GeometricMedian())


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "empty"),
        ("nope", "unknown aggregator"),
        ("median+fedavg", "must come last"),
        ("normbound:5+dp:z=1,clip=1", "first"),
        ("dp:z=1+median", "mean inside"),
        ("dp:z=1+bucket:2+fedavg", "one inner"),
        ("krum:g=2", "unknown parameter"),
        ("trimmed_mean:0.1,0.2", "bad parameter"),
        ("krum:f=two", "number"),
        ("normbound", "needs a norm"),
        ("dp:clip=1", "noise multiplier"),
        ("dp:z=1,q=0.1,population=10,sample=2", "either"),
        ("krum:f=1,f=2", "repeated"),
        ("multikrum:m=2.5", "whole"),
    ],
)
def test_bad_specs_raise_spec_errors(spec: str, match: str) -> None:
    with pytest.raises(AggregatorSpecError, match=match):
        build_aggregator(spec)


def test_spec_values_are_validated_by_the_factories() -> None:
    with pytest.raises(ValueError):
        build_aggregator("trimmed_mean:0.6")
    with pytest.raises(ValueError):
        build_aggregator("dp:z=1,eps=-1")
    with pytest.raises(ValueError, match="max_weight"):
        build_aggregator("fedavg:max_weight=0")
    assert math.isinf(build_aggregator("dp:z=1").epsilon_budget)  # type: ignore[attr-defined]


def test_every_example_in_the_help_text_builds() -> None:
    # Prepare: the quoted specs after "Examples:" in AGGREGATOR_HELP (what `--help` shows)
    import re

    from coordinator.aggregators._registry import AGGREGATOR_HELP

    examples = re.findall(r'"([^"]+)"', AGGREGATOR_HELP.split("Examples:", 1)[1])
    # Execute / Assert
    assert len(examples) >= 7
    for spec in examples:
        build_aggregator(spec).create(10)
