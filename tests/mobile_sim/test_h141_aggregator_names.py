"""`runner.build_aggregator` with an aggregator registered under a built-in stage's name
(helper-139's review of d6caa21): in a '+' spec the name is the built-in stage, as before the
"registered aggregator" message; alone, it is the registered one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coordinator.aggregators import Clip, CoordinateMedian, FedAvg
from mobile_sim.runner import AGGREGATORS, build_aggregator


class _Mine(FedAvg):
    """A registered aggregator, told apart from the built-in ones by its type."""


@pytest.fixture
def median_registered() -> Iterator[None]:
    AGGREGATORS["median"] = _Mine
    AGGREGATORS["normbound"] = _Mine
    AGGREGATORS["h141_own"] = _Mine
    yield
    AGGREGATORS.pop("median", None)
    AGGREGATORS.pop("normbound", None)
    AGGREGATORS.pop("h141_own", None)


@pytest.mark.usefixtures("median_registered")
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("normbound:5+median", Clip(norm=5.0, inner=CoordinateMedian())),
        ("normbound:2+fedavg", Clip(norm=2.0, inner=FedAvg())),
    ],
)
def test_a_plus_spec_takes_the_built_in_stage_of_that_name(spec: str, expected: Clip) -> None:
    # Before: ValueError "'median' is a registered aggregator: it is the whole spec ..."
    got = build_aggregator(spec)

    # Assert: the built-in wrapper around the built-in base (not the registered _Mine)
    assert type(got) is Clip
    assert type(got.inner) is type(expected.inner)
    assert got == expected


@pytest.mark.usefixtures("median_registered")
def test_the_name_alone_is_the_registered_aggregator() -> None:
    assert isinstance(build_aggregator("median"), _Mine)


@pytest.mark.usefixtures("median_registered")
@pytest.mark.parametrize("spec", ["h141_own+median", "normbound:5+h141_own"])
def test_a_registered_name_no_stage_has_is_still_said_to_be_whole(spec: str) -> None:
    with pytest.raises(
        ValueError, match=r"^'h141_own' is a registered aggregator: it is the whole"
    ):
        build_aggregator(spec)


@pytest.mark.usefixtures("median_registered")
def test_a_built_in_name_in_a_bad_spec_keeps_the_built_in_reason() -> None:
    # Registered "median" or not, the spec is wrong for the built-in stages' own reason.
    with pytest.raises(ValueError, match=r"'median' is a base aggregator and must come last"):
        build_aggregator("median+normbound:5")
