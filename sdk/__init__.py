"""The Plume device SDK. Importing `sdk` never imports torch; `sdk.trainer` does."""

from typing import TYPE_CHECKING, Any

from ._data import TrainingDataError
from ._types import LocalTrainer, TrainResult

if TYPE_CHECKING:
    from .client import AsyncClient, Client, RoundReport, SecureRoundReport

__all__ = [
    "AsyncClient",
    "Client",
    "LocalTrainer",
    "RoundReport",
    "SecureRoundReport",
    "TrainResult",
    "TrainingDataError",
]


def __getattr__(name: str) -> Any:
    # The coordinator client (httpx) is loaded on first use, keeping `import sdk` light.
    if name in ("Client", "AsyncClient", "RoundReport", "SecureRoundReport"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'sdk' has no attribute {name!r}")
