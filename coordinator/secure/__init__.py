"""Server-side secure aggregation: coordinate-set policy, round planning, SecAgg+ orchestration."""

from ._config import SecureConfig
from ._coordinator import SecureCoordinator, SecureOutcome, SecureTask, make_plan
from ._dp import DistributedDpAccountant, ddg_epsilon, integer_sensitivity
from ._policy import CoordinatePolicy, RandomPolicy, TopKMixPolicy, public_seed
from ._round import GroupResult, SecureRound, split_groups

__all__ = [
    "CoordinatePolicy",
    "DistributedDpAccountant",
    "GroupResult",
    "RandomPolicy",
    "SecureConfig",
    "SecureCoordinator",
    "SecureOutcome",
    "SecureRound",
    "SecureTask",
    "TopKMixPolicy",
    "ddg_epsilon",
    "integer_sensitivity",
    "make_plan",
    "public_seed",
    "split_groups",
]
