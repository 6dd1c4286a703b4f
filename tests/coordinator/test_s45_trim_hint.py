"""The trimmed mean's cohort refusal gives a hint that can be followed (s45).

`trimmed_mean:beta` over a full round that trims floor(beta·n) = 0 a side is refused; the hint
said "(raise clients_per_round or beta)" for every n. Over 2 or fewer reports no beta below 0.5
(the largest the spec takes) trims one, so "or beta" could not be followed there; above, the
hint now names the smallest beta that trims.
"""

from __future__ import annotations

import pytest

from coordinator.aggregators import build_aggregator
from coordinator.aggregators._robust import cohort_refusal


@pytest.mark.parametrize("n", [1, 2])
def test_over_two_reports_the_hint_asks_for_a_larger_cohort_only(n: int) -> None:
    # Execute
    why = cohort_refusal(build_aggregator("trimmed_mean:0.49"), n)
    # Assert
    assert why is not None and "or beta" not in why, why
    assert why.endswith(
        f"(raise clients_per_round to 3 or more: over {n} no beta below 0.5 trims one)"
    )


@pytest.mark.parametrize("n", [3, 4, 9, 10, 99, 1000, 123457])
def test_the_beta_the_hint_names_is_accepted(n: int) -> None:
    # Prepare: a beta too small for n
    why = cohort_refusal(build_aggregator(f"trimmed_mean:{0.5 / n!r}"), n)
    assert why is not None
    # Execute: the beta the hint names
    named = why.rsplit("or beta to at least 1/n: ", 1)[1].rstrip(")")
    # Assert: it trims at n, and is below 0.5
    assert float(named) < 0.5
    assert cohort_refusal(build_aggregator(f"trimmed_mean:{named}"), n) is None, named


def test_grouped_mode_names_its_own_count() -> None:
    # Execute: two group sums, as secure grouped mode passes them
    why = cohort_refusal(
        build_aggregator("trimmed_mean:0.2"), 2, unit="group sums", src="groups", grow="the cohort"
    )
    # Assert
    assert why is not None and why.endswith(
        "(raise the cohort to 3 or more: over 2 no beta below 0.5 trims one)"
    )
