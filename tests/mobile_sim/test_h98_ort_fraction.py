"""An --ort-fraction that chooses no onnxruntime device, or that --ort-tier overrides, is
refused rather than run as an all-torch fleet (as --malicious was, 3872503)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.runner import SimConfig

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "10", "--per-round",
    "4", "--rounds", "1", "--local-epochs", "1", "--no-progress",
]  # fmt: skip


def _artifacts(tmp_path: Path) -> Path:
    """A folder the CLI's checks before the run accept: the refusal must come before any
    artifact is loaded (a manifest without `loss` is a cross-entropy export)."""
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    return folder


@pytest.mark.parametrize("fraction", [0.04, 0.05])  # 0.4 and 0.5 of a device: round() gives 0
def test_an_ort_fraction_that_rounds_to_no_device_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fraction: float
) -> None:
    # Execute: the runner makes round(fraction x clients) devices train on onnxruntime; this
    # used to run as an all-torch fleet with exit status 0
    flags = [*TINY, "--ort-fraction", str(fraction), "--ort-artifacts", str(_artifacts(tmp_path))]
    code = plume([*flags, "--out", str(tmp_path / "run")])

    # Assert: one usage error naming the flags and the smallest fraction that gives a device
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "plume sim: error: --ort-fraction must make at least one device train on onnxruntime: "
        f"{fraction:g} of --clients 10 rounds to 0 (use at least 0.1)"
    ) in err
    assert not (tmp_path / "run" / "rounds.json").exists()
    with pytest.raises(ValueError, match="rounds to 0"):
        SimConfig(dataset="digits", clients=10, per_round=4, ort_fraction=fraction)


def test_the_smallest_fraction_named_gives_one_device() -> None:
    # Execute / Assert: what the message advises is accepted, and is one device
    for clients in (3, 7, 10, 1000):
        cfg = SimConfig(dataset="digits", clients=clients, per_round=1, ort_fraction=1 / clients)
        assert round(cfg.ort_fraction * cfg.clients) == 1


def test_ort_fraction_with_ort_tier_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: --ort-tier chooses the onnxruntime devices by phone tier and replaced the
    # fraction's choice without a word
    flags = [*TINY, "--fleet", "timing", "--ort-tier", "low", "--ort-fraction", "0.5"]
    code = plume([*flags, "--ort-artifacts", str(_artifacts(tmp_path))])

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "plume sim: error: --ort-fraction and --ort-tier both choose the devices that train on "
        "onnxruntime: give one"
    ) in err
