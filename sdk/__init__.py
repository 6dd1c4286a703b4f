"""The Plume device SDK. Importing `sdk` never imports torch; `sdk.trainer` does."""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._data import TrainingDataError
    from ._types import LocalTrainer, TrainingCancelled, TrainResult
    from .client import (
        AsyncClient,
        Client,
        ClientError,
        CoordinatorUnreachable,
        LayoutMismatchError,
        ModelIntegrityError,
        ModelTooLargeError,
        ParticipationCancelled,
        RoundReport,
        SdkUnsupportedError,
        SecureRoundReport,
        TaskEndedError,
        TlsCertificateError,
    )
    from .device_store import AppDirInUse, DeviceIdentityLost, DeviceStoreError

__all__ = [
    "AppDirInUse",
    "AsyncClient",
    "Client",
    "ClientError",
    "CoordinatorUnreachable",
    "DeviceIdentityLost",
    "DeviceStoreError",
    "LayoutMismatchError",
    "LocalTrainer",
    "ModelIntegrityError",
    "ModelTooLargeError",
    "ParticipationCancelled",
    "RoundReport",
    "SdkUnsupportedError",
    "SecureRoundReport",
    "TaskEndedError",
    "TlsCertificateError",
    "TrainResult",
    "TrainingCancelled",
    "TrainingDataError",
]

# Each name is loaded from its module on first use: the coordinator client imports httpx and
# the others numpy, so `import sdk` (as `plume --help` does, for `plume export`) imports neither.
_MODULE_OF = {
    "AppDirInUse": ".device_store",
    "DeviceIdentityLost": ".device_store",
    "DeviceStoreError": ".device_store",
    "AsyncClient": ".client",
    "Client": ".client",
    "ClientError": ".client",
    "CoordinatorUnreachable": ".client",
    "LayoutMismatchError": ".client",
    "ModelIntegrityError": ".client",
    "ModelTooLargeError": ".client",
    "ParticipationCancelled": ".client",
    "RoundReport": ".client",
    "SdkUnsupportedError": ".client",
    "SecureRoundReport": ".client",
    "TaskEndedError": ".client",
    "TlsCertificateError": ".client",
    "LocalTrainer": "._types",
    "TrainResult": "._types",
    "TrainingCancelled": "._types",
    "TrainingDataError": "._data",
}


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    raise AttributeError(f"module 'sdk' has no attribute {name!r}")
