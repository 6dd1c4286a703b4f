"""SecureConfig itself refuses a dp stage across SecAgg groups (helper-227's leftover): the
coordinator service refused one since b383843, but a SecureCoordinator built in a program, and
`plume sim --secure --group-size G --group-aggregator dp:...`, still ran it and reported an
epsilon that counts groups, not devices."""

from __future__ import annotations

import pytest

from coordinator.secure import SecureConfig
from coordinator.service.secure import GROUP_DP_REFUSAL, parse_secure

DP = "dp:clip=1,z=1,population=1000,sample=10,eps=8+fedavg"


@pytest.mark.parametrize("group", [DP, "dp:clip=1,z=1,denom=10+fedavg", f"avgm:0.9+{DP}"])
def test_a_dp_group_aggregator_is_refused(group: str) -> None:
    with pytest.raises(ValueError, match="has a dp stage, which is not allowed across SecAgg"):
        SecureConfig(group_size=10, group_aggregator=group)


@pytest.mark.parametrize("group", ["fedavg", "median", "trimmed_mean:0.1"])
def test_robust_group_aggregators_still_build(group: str) -> None:
    assert SecureConfig(group_size=10, group_aggregator=group).group_aggregator == group


def test_the_service_keeps_its_own_wording() -> None:
    with pytest.raises(ValueError) as caught:
        parse_secure({"group_size": 10, "group_aggregator": DP}, seed=0, server_lr=1.0)
    assert str(caught.value) == GROUP_DP_REFUSAL
