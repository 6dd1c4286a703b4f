"""The Plume device SDK. Importing `sdk` never imports torch; `sdk.trainer` does."""

from ._types import LocalTrainer, TrainResult

__all__ = ["LocalTrainer", "TrainResult"]
