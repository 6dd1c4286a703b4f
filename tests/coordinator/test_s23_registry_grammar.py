"""Rough edges of the aggregator grammar (helper-229's review, finding 5): a '+' in a number's
exponent split the stage ("normbound:1e+3+median" failed as "unknown aggregator '3'"), keys
were case-sensitive while stage names were not ("Krum:F=2" failed), and a value given both
unnamed and by key was reported as an unknown parameter."""

from __future__ import annotations

import pytest

from coordinator.aggregators import AggregatorSpecError, build_aggregator


def test_an_exponent_sign_is_not_a_stage_break() -> None:
    assert repr(build_aggregator("normbound:1e+3+median")) == repr(
        build_aggregator("normbound:1000+median")
    )
    assert repr(build_aggregator("dp:clip=1E+0,z=1+fedavg")) == repr(
        build_aggregator("dp:clip=1,z=1+fedavg")
    )


def test_a_plus_after_a_stage_name_ending_in_e_still_breaks() -> None:
    # 'e' not after a digit: "nnm:f=1+median" and a name ending in e ("cclip:tau=auto+...")
    assert repr(build_aggregator("trimmed_mean:0.1,support=1+fedavg".split("+")[0])) == repr(
        build_aggregator("trimmed_mean:0.1,support=1")
    )
    with pytest.raises(AggregatorSpecError, match="must come last"):
        build_aggregator("median+fedavg")


def test_keys_are_case_insensitive_like_names() -> None:
    assert repr(build_aggregator("Krum:F=2")) == repr(build_aggregator("krum:f=2"))


def test_a_value_given_twice_says_so() -> None:
    with pytest.raises(AggregatorSpecError, match="'beta' given twice in 'trimmed_mean'"):
        build_aggregator("trimmed_mean:0.2,beta=0.3")
