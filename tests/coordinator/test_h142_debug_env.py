"""PLUME_DEBUG=false (or off, no) turned tracebacks on, as any value but "" and "0" did: the
words that mean off now mean off, whatever their case and surrounding space (helper-140's
review). Both CLIs read it through `coordinator.cli.debug_enabled`."""

from __future__ import annotations

import argparse

import pytest

from coordinator import _cli as coord_cli
from coordinator.cli import debug_enabled, main


def _raises(args: argparse.Namespace) -> int:
    raise ValueError("bad value")


@pytest.mark.parametrize(
    "value", ["false", "FALSE", " False ", "no", "No", "off", "OFF", "\toff\n", "0", ""]
)
def test_off_words_are_off(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(coord_cli, "_backup", _raises)
    monkeypatch.setenv("PLUME_DEBUG", value)
    assert not debug_enabled()
    assert main(["coordinator", "backup", "--db", "x.db", "--out", "y.db"]) == 2
    assert capsys.readouterr().err == "plume coordinator backup: error: bad value\n"


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", "2", "debug"])
def test_other_values_are_on(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUME_DEBUG", value)
    assert debug_enabled()
