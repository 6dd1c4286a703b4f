"""On-device training on plain onnxruntime: no torch is imported here or by anything it imports.

Exceptions: `ArtifactError` (bad, missing or tampered artifact directory).
"""

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
]
