"""validate_task checks secure grouped mode's aggregator across groups against its cohort.

c8a37b1's `cohort_refusal` walked the task's aggregator at n = clients_per_round but not
`secure.group_aggregator`, whose n is the number of group sums: at most max(1, cohort // g)
for a cohort of ceil(clients_per_round · over_selection) devices in groups of g
(`split_groups`). `krum:f=1` over 3 groups (12 devices in groups of 4) can never meet
n > 2f + 2 and was accepted.
"""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.service.rounds import validate_task

from .test_service_support import task_config


def grouped(group_aggregator: str, cpr: int, g: int, **kw: Any) -> Any:
    secure = {"group_size": g, "group_aggregator": group_aggregator}
    return task_config(aggregator="fedavg", clients_per_round=cpr, secure=secure, **kw)


@pytest.mark.parametrize(
    ("agg", "cpr", "g", "reason"),
    [
        (
            "krum:f=1",
            12,
            4,
            "secure.group_aggregator: krum: Krum needs n > 2f + 2, so f=1 needs more than 4 "
            "group sums a round, and a full round has 3 (12 devices selected in groups of "
            "secure.group_size=4) (raise clients_per_round or lower secure.group_size or "
            "lower f)",
        ),
        ("multikrum:f=2", 20, 3, "needs more than 6 group sums a round, and a full round has 6"),
        ("trimmed_mean:0.2", 12, 3, "trims floor(beta·n) = 0 of a full round's 4 group sums"),
        ("bucket:2+krum:f=1", 24, 3, "more than 4 bucket means a round, and a full round has 4"),
    ],
)
def test_a_group_aggregator_that_never_meets_its_bound_is_refused(
    agg: str, cpr: int, g: int, reason: str
) -> None:
    with pytest.raises(ValueError) as exc:
        validate_task(grouped(agg, cpr, g))
    assert reason in str(exc.value)


@pytest.mark.parametrize(
    ("agg", "cpr", "g"),
    [("krum:f=1", 15, 3), ("median", 9, 3), ("trimmed_mean:0.2", 15, 3), ("fedavg", 3, 3)],
)
def test_a_group_aggregator_that_meets_it_is_accepted(agg: str, cpr: int, g: int) -> None:
    validate_task(grouped(agg, cpr, g))
