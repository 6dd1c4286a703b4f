"""tests/sdk/conftest.py builds torch's ONNX operator registry once per process: each export
gets a copy equal to a fresh build, of its own, and writes the same bytes as with a fresh one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.onnx._internal.exporter import _registration

from sdk.onnx_export import export_training_artifacts
from tests.sdk import conftest

FILES = ("train_step.onnx", "infer.onnx", "manifest.json")
# This module imports the registration module at collection, so the conftest's autouse fixture
# patches it for every test here.


def _export(out: Path) -> None:
    # Momentum: the export adds its custom translations to the registry it gets.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    export_training_artifacts(model, torch.randn(4, 6), out, optimizer="momentum")


def test_each_registry_is_a_copy_of_one_build_equal_to_a_fresh_one() -> None:
    # Execute
    first = _registration.ONNXRegistry.from_torchlib()
    second = _registration.ONNXRegistry.from_torchlib()
    fresh = conftest.ORIGINAL[0](_registration.ONNXRegistry)

    # Assert: built once (the patch is in place), equal to a fresh build, lists not shared
    assert _registration.ONNXRegistry.from_torchlib.__func__ is not conftest.ORIGINAL[0]
    assert first is not second and first.functions is not second.functions
    assert first.opset_version == second.opset_version == fresh.opset_version
    assert first.functions == second.functions == fresh.functions
    assert all(first.functions[t] is not second.functions[t] for t in first.functions), (
        "a list shared between two copies"
    )


def test_a_custom_operator_stays_in_the_registry_it_was_added_to() -> None:
    # Prepare
    first = _registration.ONNXRegistry.from_torchlib()
    target = torch.ops.aten.relu.default
    before = list(first.functions[target.name()])

    # Execute
    first.register_op(target, lambda x: x)
    second = _registration.ONNXRegistry.from_torchlib()

    # Assert
    assert len(first.functions[target.name()]) == len(before) + 1
    assert second.functions[target.name()] == before


def test_an_export_with_the_registry_built_once_writes_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Execute: twice with copies (the second after the first added its translations to its
    # copy), then with torch's own fresh build.
    _export(tmp_path / "copy1")
    _export(tmp_path / "copy2")
    monkeypatch.setattr(
        _registration.ONNXRegistry, "from_torchlib", classmethod(conftest.ORIGINAL[0])
    )
    _export(tmp_path / "fresh")

    # Assert
    for name in FILES:
        fresh = (tmp_path / "fresh" / name).read_bytes()
        assert (tmp_path / "copy1" / name).read_bytes() == fresh, name
        assert (tmp_path / "copy2" / name).read_bytes() == fresh, name
