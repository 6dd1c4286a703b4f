"""Stop 48, helper-407's review of the simulator: `plume sim --ort-artifacts DIR` without
`--ort-fraction` or `--ort-tier` was accepted and changed nothing (every device trained on
torch), while the reverse (`--ort-fraction` without `--ort-artifacts`) was refused; "a flag
that would change nothing in a run is a usage error" (docs/simulator.md). It is now refused
with exit status 2, in one line saying what to add."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume

_RUN = ["sim", "--dataset", "digits", "--rounds", "1", "--no-progress"]


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            [],
            "--ort-artifacts {art} only applies with --ort-fraction FRACTION or --ort-tier TIER "
            "(the devices that train on onnxruntime): add one of them, or drop --ort-artifacts",
        ),
        (
            ["--ort-fraction", "0"],  # no device on onnxruntime either
            "--ort-artifacts {art} only applies with --ort-fraction FRACTION or --ort-tier TIER "
            "(the devices that train on onnxruntime): add one of them, or drop --ort-artifacts",
        ),
        (
            ["--secure"],  # where --ort-fraction and --ort-tier are refused in turn
            "--ort-artifacts only applies to plain rounds, with --ort-fraction or --ort-tier; "
            "a --secure run trains every device on torch: drop --ort-artifacts",
        ),
    ],
)
def test_ort_artifacts_that_no_device_uses_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], line: str
) -> None:
    # Prepare: an existing folder (its contents are not read before this check)
    art = tmp_path / "art"
    art.mkdir()

    # Execute
    code = plume([*_RUN, "--ort-artifacts", str(art), *flags, "--out", str(tmp_path / "run")])

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"plume sim: error: {line.format(art=art)}\n"
    assert not (tmp_path / "run").exists()
