"""An ONNX Runtime format file (.ort, a flatbuffer) in place of an ONNX graph is refused by
name (helper-338): onnxruntime loads such bytes too, and Plume's protobuf walker refused them
only by accident ("wire type 4")."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnxruntime as ort
import pytest

from sdk.ort import ArtifactError, OrtTrainer
from sdk.ort._manifest import MANIFEST_NAME

from .test_h72_artifacts import _copy, exported

__all__ = ["exported"]  # the fixture used here


def test_an_ort_format_graph_is_refused_by_name(exported: dict[str, Path], tmp_path: Path) -> None:
    # Prepare: train_step converted to ORT format by onnxruntime itself, the manifest's size and
    # digest of it fixed (so only the format differs from a sound export)
    art = _copy(exported["sgd"], tmp_path / "art")
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    graph = art / manifest["files"]["train_step"]["path"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "train_step.ort")
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(graph.read_bytes(), options, providers=["CPUExecutionProvider"])
    data = (tmp_path / "train_step.ort").read_bytes()
    assert data[4:8] == b"ORTM"
    graph.write_bytes(data)
    manifest["files"]["train_step"]["bytes"] = len(data)
    manifest["files"]["train_step"]["sha256"] = hashlib.sha256(data).hexdigest()
    (art / MANIFEST_NAME).write_text(json.dumps(manifest))
    # Execute and assert
    with pytest.raises(
        ArtifactError, match=r"train_step: the file is in ONNX Runtime's own format"
    ):
        OrtTrainer.from_dir(art)
