"""`OrtTrainer.from_dir` on a path that holds no export said only `no manifest.json in
artifacts/nope`, for a missing directory, a file and an empty directory alike; it now says which,
and how the artifacts are made."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk.ort import ArtifactError, OrtTrainer


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: None, "no such directory"),
        (lambda p: p.write_text("x"), "it is a file, not a directory"),
        (lambda p: p.mkdir(), "the directory holds no export"),
    ],
)
def test_a_path_without_an_export_says_why_and_what_to_run(
    tmp_path: Path, make: object, why: str
) -> None:
    # Prepare
    path = tmp_path / "artifacts"
    make(path)  # type: ignore[operator]
    # Execute / Assert
    with pytest.raises(ArtifactError) as info:
        OrtTrainer.from_dir(path)
    assert str(info.value) == (
        f"no manifest.json in {path}: {why}; write the artifacts with "
        f"`plume export --model NAME --out {path}` (docs/devices.md)"
    )
