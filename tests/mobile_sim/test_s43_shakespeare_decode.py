"""Helper-s43: the Shakespeare loader reads its file as strict UTF-8 and accepts a byte-order
mark. Before, it read with errors="replace": a file in another encoding trained silently on
damaged text (each bad byte an unknown id), and a UTF-8 byte-order mark glued to the first
speaker's name lost the first speech."""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import pytest

from mobile_sim.data import DataError
from mobile_sim.datasets import load_shakespeare

# Two roles, three speeches each: enough for a client per role at the small settings below.
_PLAY = "\n\n".join(
    f"{who}:\n{line} {k}, said {who.lower()} to the room,\nand more words follow here."
    for k in range(3)
    for who, line in (("ROMEO", "Café au lait is fine"), ("JULIET", "Good night, good night"))
)
_SMALL = {"seq_len": 10, "stride": 5, "min_speeches": 2}


def _write(root: Path, data: bytes) -> Path:
    path = root / "tinyshakespeare" / "input.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def test_a_file_that_is_not_utf8_is_a_data_error_naming_the_file_and_the_byte(
    tmp_path: Path,
) -> None:
    # Prepare: the play saved as Latin-1 (é is the one byte 0xe9)
    data = _PLAY.encode("latin-1")
    path = _write(tmp_path, data)

    # Execute
    with pytest.raises(DataError) as exc:
        load_shakespeare(tmp_path, **_SMALL)

    # Assert: one line, the file, the byte and its offset
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(
        f"{path}: not UTF-8 text: byte 0xe9 at byte offset {data.index(0xE9)}"
    )


def test_the_offset_counts_a_byte_order_mark(tmp_path: Path) -> None:
    # Prepare: a byte-order mark, then the Latin-1 text
    data = codecs.BOM_UTF8 + _PLAY.encode("latin-1")
    _write(tmp_path, data)

    # Execute
    with pytest.raises(DataError, match=f"at byte offset {data.index(0xE9)} "):
        load_shakespeare(tmp_path, **_SMALL)


def test_a_byte_order_mark_loses_no_speech(tmp_path: Path) -> None:
    # Prepare: the same UTF-8 play with and without a byte-order mark
    _write(tmp_path / "plain", _PLAY.encode("utf-8"))
    _write(tmp_path / "bom", codecs.BOM_UTF8 + _PLAY.encode("utf-8"))

    # Execute
    plain = load_shakespeare(tmp_path / "plain", **_SMALL)
    bom = load_shakespeare(tmp_path / "bom", **_SMALL)

    # Assert: the same clients and windows (the first speech, ROMEO's, is kept)
    assert bom.group_names == plain.group_names == ("JULIET", "ROMEO")
    for a, b in ((bom.x_train, plain.x_train), (bom.y_train, plain.y_train)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(bom.x_test, plain.x_test)


def test_plume_sim_reports_a_file_that_is_not_utf8_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from coordinator.cli import main as plume

    path = _write(tmp_path, _PLAY.encode("latin-1"))
    monkeypatch.setenv("PLUME_DATA", str(tmp_path))

    # Execute
    code = plume(["sim", "--dataset", "shakespeare", "--rounds", "1", "--out", str(tmp_path / "o")])

    # Assert: one error line naming the file, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("plume sim: error: ") and f"{path}: not UTF-8 text" in err[0]
