"""`cohort_refusal` at the bounds of each rule, with its whole message.

Krum needs n > 2f + 2, NNM f < n/2, a fractional f or beta must resolve to at least 1 at a
full round, and a bucket stage must leave at least 3 bucket means, whose count is then the n
of the rule behind it. Each case sits on the bound: one report more is accepted.
"""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.aggregators import Bucketing, Krum, NearestNeighborMixing, TrimmedMean
from coordinator.aggregators._robust import cohort_refusal

RAISE = "(raise clients_per_round or lower f)"

# (factory, a refused full round, its message, the smallest accepted full round)
CASES: list[tuple[Any, int, str, int]] = [
    (
        Krum(f=1),
        4,
        "krum: Krum needs n > 2f + 2, so f=1 needs more than 4 reports a round, and a full "
        f"round has 4 (clients_per_round) {RAISE}",
        5,
    ),
    (
        Krum(f=0),
        2,
        "krum: Krum needs n > 2f + 2, so f=0 needs more than 2 reports a round, and a full "
        f"round has 2 (clients_per_round) {RAISE}",
        3,
    ),
    (
        Krum(f=1, m=None),
        4,
        "multikrum: Krum needs n > 2f + 2, so f=1 needs more than 4 reports a round, and a "
        f"full round has 4 (clients_per_round) {RAISE}",
        5,
    ),
    (
        NearestNeighborMixing(f=1, inner=Krum(f=0)),
        2,
        "nnm: NNM needs f < n/2, so f=1 needs more than 2 reports a round, and a full round "
        f"has 2 (clients_per_round) {RAISE}",
        3,
    ),
    (
        NearestNeighborMixing(f=1, inner=Krum(f=0.2)),
        3,
        "krum: f=0.2 (floor(f·n) = 0) of a full round's 3 reports (clients_per_round) "
        "tolerates none, so no round has the rule's guarantee (raise clients_per_round or f)",
        5,
    ),
    (
        Bucketing(2, inner=Krum(f=1)),
        8,
        "krum: Krum needs n > 2f + 2, so f=1 needs more than 4 bucket means a round, and a "
        f"full round has 4 (clients_per_round=8 in buckets of 2) {RAISE}",
        9,
    ),
    (
        Bucketing(3, inner=Krum(f=1)),
        6,
        "bucket: s=3 leaves 2 bucket means of a full round's 6 reports (clients_per_round), "
        "and over 2 or fewer no rule can outvote a bad one (the median of two is their "
        "mean): s must be below n/2 = 3 for 3 bucket means or more (lower s or raise "
        "clients_per_round)",
        13,
    ),
    (
        TrimmedMean(0.1),
        9,
        "trimmed_mean: beta=0.1 trims floor(beta·n) = 0 of a full round's 9 reports "
        "(clients_per_round) a side, so every round is the plain mean (raise "
        "clients_per_round, or beta to at least 1/n: 0.1112)",
        10,
    ),
    (
        TrimmedMean(0.4),
        2,
        "trimmed_mean: beta=0.4 trims floor(beta·n) = 0 of a full round's 2 reports "
        "(clients_per_round) a side, so every round is the plain mean (raise "
        "clients_per_round to 3 or more: over 2 no beta below 0.5 trims one)",
        3,
    ),
]


@pytest.mark.parametrize(("factory", "n", "message", "accepted"), CASES, ids=range(len(CASES)))
def test_a_cohort_on_the_bound_is_refused_and_the_next_one_up_is_not(
    factory: Any, n: int, message: str, accepted: int
) -> None:
    assert cohort_refusal(factory, n) == message
    for m in range(n, accepted):
        assert cohort_refusal(factory, m) is not None
    assert cohort_refusal(factory, accepted) is None


@pytest.mark.parametrize(
    "factory",
    [Krum(f=0.1), NearestNeighborMixing(f=0.1, inner=Krum(f=0)), TrimmedMean(0.1)],
    ids=["krum", "nnm", "trimmed_mean"],
)
def test_a_fraction_is_refused_until_it_tolerates_one_report(factory: Any) -> None:
    # 0.1 of 9 resolves to 0 (refused); of 10, to 1.
    assert cohort_refusal(factory, 9) is not None
    assert cohort_refusal(factory, 10) is None


def test_rules_without_a_bound_are_never_refused() -> None:
    assert cohort_refusal(TrimmedMean(0.0), 1) is None
    assert cohort_refusal(Bucketing(1, inner=TrimmedMean(0.0)), 3) is None


def test_grouped_mode_names_its_group_sums_and_how_they_follow_from_the_task() -> None:
    message = cohort_refusal(
        Bucketing(2, inner=Krum(f=1)), 8, unit="group sums", src="groups", grow="groups"
    )
    assert message == (
        "krum: Krum needs n > 2f + 2, so f=1 needs more than 4 bucket means a round, and a "
        "full round has 4 (8 group sums, groups in buckets of 2) (raise groups or lower f)"
    )
