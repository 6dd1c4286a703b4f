"""helper-222's finding 10: `plume sim --help` said "(default: SecureConfig's, 0.0125)", an
internal class name, where `plume coordinator create-task --help` says "(default: 0.0125)".
The secure flags' defaults are now said as values."""

from __future__ import annotations

from dataclasses import fields

import pytest

from coordinator.cli import main as plume
from coordinator.secure import SecureConfig


def test_the_secure_defaults_are_said_as_values(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit):
        plume(["sim", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrap the columns

    # Assert
    default = {f.name: f.default for f in fields(SecureConfig)}
    assert "SecureConfig" not in text
    assert f"shared coordinates per round (default: {default['coord_fraction']})" in text
    assert f"bits per value before masking, 1-16 (default: {default['value_bits']})" in text
    assert f"L2 clip of the sent vector (default: {default['clip_norm']})" in text
