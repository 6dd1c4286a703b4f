"""PLUME_DEBUG: set to a true value, an error `plume` would end with one line is raised as is
(its traceback shown). `PLUME_DEBUG=0` turned that on too, as any non-empty value did: "" and
"0" now mean off, as the epilog's `set PLUME_DEBUG=1` suggests."""

from __future__ import annotations

import argparse

import pytest

from coordinator import _cli as coord_cli
from coordinator.cli import debug_enabled, main


def _raises(args: argparse.Namespace) -> int:
    raise ValueError("bad value\nsecond line")


@pytest.mark.parametrize("value", [None, "", "0", " 0 "])
def test_unset_empty_or_0_is_one_line(
    value: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.setattr(coord_cli, "_backup", _raises)
    if value is None:
        monkeypatch.delenv("PLUME_DEBUG", raising=False)
    else:
        monkeypatch.setenv("PLUME_DEBUG", value)

    # Execute
    code = main(["coordinator", "backup", "--db", "x.db", "--out", "y.db"])

    # Assert
    assert code == 2
    assert capsys.readouterr().err == "plume coordinator backup: error: bad value\n"
    assert not debug_enabled()


@pytest.mark.parametrize("value", ["1", "yes", "2"])
def test_another_value_raises_the_error_itself(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coord_cli, "_backup", _raises)
    monkeypatch.setenv("PLUME_DEBUG", value)
    with pytest.raises(ValueError, match="bad value"):
        main(["coordinator", "backup", "--db", "x.db", "--out", "y.db"])
    assert debug_enabled()
