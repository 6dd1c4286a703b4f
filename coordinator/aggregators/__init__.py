"""Aggregators: FedAvg, robust aggregators, DP and secure-sum wrappers (factory -> process)."""

from ._base import (
    AggregateOutput,
    AggregationProcess,
    AggregatorFactory,
    ClientUpdate,
    Measurements,
)
from ._mean import FedAvg

__all__ = [
    "AggregateOutput",
    "AggregationProcess",
    "AggregatorFactory",
    "ClientUpdate",
    "FedAvg",
    "Measurements",
]
