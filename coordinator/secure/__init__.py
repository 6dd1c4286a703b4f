"""Server-side secure aggregation: coordinate-set policy, round planning, SecAgg+ orchestration."""

from ._config import SecureConfig
from ._coordinator import (
    BudgetExhausted,
    PlanNumbers,
    SecureCoordinator,
    SecureOutcome,
    SecureTask,
    budget_k,
    make_plan,
    plan_numbers,
)
from ._dp import (
    RDP_ORDERS,
    DistributedDpAccountant,
    ddg_epsilon,
    integer_sensitivity,
    l1_sensitivity,
    min_round_rho,
    skellam_rdp,
)
from ._policy import CoordinatePolicy, RandomPolicy, TopKMixPolicy, public_seed
from ._round import BUNDLE_BYTES, GroupResult, SecureRound, group_reason, split_groups

__all__ = [
    "BUNDLE_BYTES",
    "BudgetExhausted",
    "RDP_ORDERS",
    "CoordinatePolicy",
    "DistributedDpAccountant",
    "GroupResult",
    "PlanNumbers",
    "RandomPolicy",
    "SecureConfig",
    "SecureCoordinator",
    "SecureOutcome",
    "SecureRound",
    "SecureTask",
    "TopKMixPolicy",
    "ddg_epsilon",
    "integer_sensitivity",
    "l1_sensitivity",
    "make_plan",
    "min_round_rho",
    "budget_k",
    "public_seed",
    "plan_numbers",
    "skellam_rdp",
    "group_reason",
    "split_groups",
]
