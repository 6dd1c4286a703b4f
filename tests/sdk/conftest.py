"""Shared settings for the sdk tests: torch's ONNX operator registry built once per process.

Every `torch.onnx.export(dynamo=True)` (each `export_training_artifacts`, several a test in
the ONNX files) starts by building an `ONNXRegistry` from torchlib: some 500 operators, their
ONNX signatures inferred one by one, 0.4-0.8 s an export on this 2-core machine (a quarter of
a digits_mlp export's 3.3 s, cProfile). The registry depends only on the installed torch and
onnxscript and on the opset, so the tests build it once per opset and hand each export a copy
of its own: the exporter adds the export's custom translations (`custom_translation_table`)
to the registry it gets, and a shared one would carry them into the next export. What the
exporter writes is unchanged (tests/sdk/test_s64d_torchlib_registry.py).

Patched for each test only once the exporter's registration module is imported (the first
export of a process builds its registry as before), and put back after it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

_REGISTRATION = "torch.onnx._internal.exporter._registration"
# opset -> the registry torchlib gave; never handed out itself, only copies.
_BUILT: dict[int, Any] = {}
# The unpatched classmethod's function, for the tests that compare against a fresh build.
ORIGINAL: list[Callable[..., Any]] = []


def _copy(cls: type, built: Any) -> Any:
    """A registry with `built`'s operators in lists of its own (`register_op` appends to or
    inserts into the list of its target; the entries themselves are not changed after they
    are made)."""
    registry = cls()
    registry._opset_version = built._opset_version
    registry.functions = {target: list(metas) for target, metas in built.functions.items()}
    return registry


@pytest.fixture(autouse=True)
def _torchlib_registry_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    registration = sys.modules.get(_REGISTRATION)
    if registration is None:
        return
    registry_class = registration.ONNXRegistry
    if not ORIGINAL:
        ORIGINAL.append(registry_class.from_torchlib.__func__)
    original = ORIGINAL[0]

    def from_torchlib(
        cls: type, opset_version: int = registration._constants.TORCHLIB_OPSET
    ) -> Any:
        if opset_version not in _BUILT:
            _BUILT[opset_version] = original(cls, opset_version)
        return _copy(cls, _BUILT[opset_version])

    monkeypatch.setattr(registry_class, "from_torchlib", classmethod(from_torchlib))
