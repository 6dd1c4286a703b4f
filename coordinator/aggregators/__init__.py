"""Aggregators: FedAvg, robust aggregators, DP and secure-sum wrappers (factory -> process)."""

from ._backdoor import CollusionFilter
from ._base import (
    AggregateOutput,
    AggregationProcess,
    AggregatorFactory,
    ClientUpdate,
    Measurements,
    NonFiniteReportError,
)
from ._clip import AdaptiveClip, Clip, clip_update
from ._dp import DPMean
from ._mean import FedAvg
from ._registry import AGGREGATOR_HELP, DEFAULT_ROBUST, AggregatorSpecError, build_aggregator
from ._robust import (
    Bucketing,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MomentumCosineFilter,
    NearestNeighborMixing,
    RobustLearningRate,
    TrimmedMean,
    UpdateRows,
)
from ._server_opt import SERVER_OPTIMIZERS, ServerOptimizer
from ._state import StateCodecError, decode_state, encode_state

__all__ = [
    "AggregateOutput",
    "AggregationProcess",
    "AggregatorFactory",
    "ClientUpdate",
    "FedAvg",
    "Measurements",
    "NonFiniteReportError",
    # robust aggregation, clipping and DP
    "AGGREGATOR_HELP",
    "AdaptiveClip",
    "AggregatorSpecError",
    "Bucketing",
    "CenteredClipping",
    "Clip",
    "CollusionFilter",
    "CoordinateMedian",
    "DEFAULT_ROBUST",
    "DPMean",
    "GeometricMedian",
    "Krum",
    "MomentumCosineFilter",
    "NearestNeighborMixing",
    "RobustLearningRate",
    "TrimmedMean",
    "UpdateRows",
    "build_aggregator",
    "clip_update",
    # server optimizers
    "SERVER_OPTIMIZERS",
    "ServerOptimizer",
    # state persistence
    "StateCodecError",
    "decode_state",
    "encode_state",
]
