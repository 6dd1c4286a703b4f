"""`plume sim report` escapes control characters in what it prints from a run folder (stop 57).

`printable` escaped lone surrogates only: a run folder's name or a rounds.json's label holding
ESC or a newline reached the terminal as is, and could clear the screen or forge a line of the
report. Now every character `str.isprintable` refuses is written as its Python escape;
other text, non-ASCII included, is printed as it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim.report_extra import printable

_ROW = {
    "round": 1,
    "bytes_up": 10,
    "bytes_down": 20,
    "dense_up": 40,
    "wall_s": 0.1,
    "sim_s": 0.2,
    "wait_s": 0.0,
    "accuracy": 0.5,
}


def _write(folder: Path, label: str) -> None:
    doc: dict[str, Any] = {
        "config": {"dataset": "digits", "model": "digits_mlp"},
        "summary": {"label": label, "rounds": 1, "interrupted": False},
        "rounds": [_ROW],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rounds.json").write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "plain"),
        ("caf\u00e9 \u4e2d\u6587", "caf\u00e9 \u4e2d\u6587"),  # printable non-ASCII is kept
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("one\ntwo\r", "one\\ntwo\\r"),
        ("k\udcff", "k\\udcff"),  # a name that is not UTF-8, as before
        ("rtl\u202eoverride", "rtl\\u202eoverride"),
    ],
)
def test_printable_escapes_what_would_act_on_the_terminal(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_a_sweep_folder_named_with_escapes_is_printed_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "k\x1b[2J", "x")
    _write(tmp_path / "fine", "y")
    assert plume(["sim", "report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "k\\x1b[2J" in out


def test_a_label_with_a_newline_does_not_forge_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "run\nplume sim: all good")
    assert plume(["sim", "report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "plume sim: all good" not in out.splitlines()
