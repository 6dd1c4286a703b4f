"""`OrtTrainer.from_dir` given the manifest's own path (`artifacts/mlp/manifest.json`, an easy
slip) says to pass its folder; before, it said the path was a file and suggested exporting
into it (`plume export ... --out artifacts/mlp/manifest.json`), which cannot work. Any other
file keeps the message of tests/sdk/test_h85_artifacts_dir.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk.ort import ArtifactError, OrtTrainer


def test_the_manifests_own_path_names_its_folder(tmp_path: Path) -> None:
    # Prepare: a manifest.json (its content is never read on this path)
    folder = tmp_path / "artifacts" / "mlp"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")

    # Execute
    with pytest.raises(ArtifactError) as caught:
        OrtTrainer.from_dir(folder / "manifest.json")

    # Assert
    assert str(caught.value) == (
        f"{folder / 'manifest.json'} is the manifest, not the artifacts' directory: pass its "
        f"folder, {folder}"
    )


def test_a_missing_manifest_path_keeps_the_export_hint(tmp_path: Path) -> None:
    # Prepare: no file there, so nothing says it is a manifest
    path = tmp_path / "artifacts" / "manifest.json"

    # Execute / Assert
    with pytest.raises(ArtifactError, match="no such directory; write the artifacts with"):
        OrtTrainer.from_dir(path)
