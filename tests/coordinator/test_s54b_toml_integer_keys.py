"""serve's integer keys in a --config TOML file (port, register-burst, keep-frames,
snapshots-per-version, upload-buffer-mb): TOML reads `1e3` and `1000.0` as floats, and
`snapshots-per-version = 1e3` was refused with "expected a whole number, got '1000.0'", which
1000.0 is. The line now says the key must be a TOML integer and shows it written so
(`snapshots-per-version = 1000`); integers written in digits are taken as before."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.service import ServiceConfig
from tests.coordinator.test_h113_serve_config import _config, _config_refused, _serve, served

__all__ = ["served"]  # the fixture, imported for the tests below

INTEGER_KEYS = {
    "port": ("port", 8080),
    "register-burst": ("register_burst", 20),
    "keep-frames": ("keep_frames", 50),
    "snapshots-per-version": ("snapshots_per_version", 1000),
    "upload-buffer-mb": ("upload_buffer_mb", 256),
}


@pytest.mark.parametrize("key", sorted(INTEGER_KEYS))
def test_a_whole_float_is_refused_as_not_a_toml_integer_showing_the_integer(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    capsys: pytest.CaptureFixture[str],
    key: str,
) -> None:
    # Prepare: the key's value written with an exponent (a TOML float)
    _, value = INTEGER_KEYS[key]
    conf = _config(tmp_path, f"{key} = {value / 10:g}e1\n")
    # Execute
    line = _config_refused(capsys, served, conf, "--db", str(tmp_path / "x.db"))
    # Assert: named as a float, with the integer to write, and no claim that it is not whole
    assert line.endswith(
        f": {key} = {float(value)!r}: must be a TOML integer, written in digits "
        f"({key} = {value}); a decimal point or an exponent (1e3) makes a TOML float"
    ), line
    assert "whole number" not in line


@pytest.mark.parametrize("key", sorted(INTEGER_KEYS))
def test_the_same_value_as_a_toml_integer_is_taken(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    key: str,
) -> None:
    dest, value = INTEGER_KEYS[key]
    conf = _config(tmp_path, f'db = "x.db"\n{key} = {value}\n')
    assert _serve("--config", str(conf)) == 0
    config, _host, port, _kw = served[0]
    taken = port if dest == "port" else getattr(config, {
        "register_burst": "register_burst",
        "keep_frames": "keep_frames_rounds",
        "snapshots_per_version": "snapshots_per_version",
        "upload_buffer_mb": "upload_buffer_bytes",
    }[dest])  # fmt: skip
    assert taken == (value << 20 if dest == "upload_buffer_mb" else value)


@pytest.mark.parametrize("text", ["1.5", "inf", "nan", "-0.5", "1e30"])
def test_a_float_that_no_integer_equals_is_refused_as_a_float(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    capsys: pytest.CaptureFixture[str],
    text: str,
) -> None:
    conf = _config(tmp_path, f"snapshots-per-version = {text}\n")
    line = _config_refused(capsys, served, conf, "--db", str(tmp_path / "x.db"))
    assert line.endswith(": must be a TOML integer, written in digits; a float is not one"), line


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(number=st.floats(allow_nan=True, allow_infinity=True))
def test_every_toml_float_for_an_integer_key_gets_the_float_line(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    capsys: pytest.CaptureFixture[str],
    number: float,
) -> None:
    # Prepare: any float, as TOML writes it (repr is valid TOML for finite floats)
    text = (
        "nan"
        if math.isnan(number)
        else ("inf" if number > 0 else "-inf")
        if math.isinf(number)
        else repr(number)
    )
    conf = _config(tmp_path, f"register-burst = {text}\n")
    # Execute
    line = _config_refused(capsys, served, conf, "--db", str(tmp_path / "x.db"))
    # Assert: always the TOML-integer line; the integer shown equals the float when one does
    assert ": must be a TOML integer, written in digits" in line, line
    if number.is_integer() and abs(number) <= 2**53:
        assert f"(register-burst = {int(number)})" in line, line
    else:
        assert line.endswith("a float is not one"), line
