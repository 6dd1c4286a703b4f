"""On-device training on plain onnxruntime; nothing here imports torch, even indirectly."""

from .._data import TrainingDataError
from ._device import OrtDevice, OrtUpload
from ._manifest import MANIFEST_NAME, ArtifactError, Manifest, load_manifest
from ._runtime import OrtTrainer, session_options

__all__ = [
    "MANIFEST_NAME",
    "ArtifactError",
    "Manifest",
    "OrtDevice",
    "OrtTrainer",
    "OrtUpload",
    "load_manifest",
    "session_options",
    "TrainingDataError",
]
