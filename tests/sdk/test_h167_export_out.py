"""`plume export` finds an --out it cannot write before tracing (seconds for the mlp, minutes
for an LSTM), as `plume sim` makes its --out before the rounds. Before, only an --out under a
regular file was refused up front; any other unwritable --out failed after the trace."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main
from sdk import onnx_export

_EXPORT = ["export", "--model", "digits_mlp", "--no-progress"]


def _no_trace(*args: object, **kwargs: object) -> None:
    raise AssertionError("traced before --out was checked")


def test_an_out_that_cannot_be_made_is_refused_before_tracing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a folder name longer than any file system takes (refused for root too)
    monkeypatch.setattr(onnx_export, "export_training_artifacts", _no_trace)
    out = tmp_path / "new" / ("x" * 300)
    # Execute
    code = main([*_EXPORT, "--out", str(out)])
    # Assert: status 1, one line naming --out and the reason; no folder left behind
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"plume export: error: --out: cannot write the artifacts into {out} (")
    assert err.count("\n") == 1
    assert "too long" in err
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_out_is_refused_before_tracing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a read-only folder; root writes into one anyway, so as root the probe file's
    # creation in it is refused as the kernel refuses it to any other user
    monkeypatch.setattr(onnx_export, "export_training_artifacts", _no_trace)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    if os.geteuid() == 0:
        mkstemp = tempfile.mkstemp

        def refused(*args: Any, **kwargs: Any) -> Any:
            if Path(kwargs.get("dir") or "") == out:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))
            return mkstemp(*args, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refused)
    try:
        # Execute
        code = main([*_EXPORT, "--out", str(out)])
        # Assert: status 1, one line naming --out and the reason, nothing traced or left
        assert code == 1
        assert capsys.readouterr().err == (
            f"plume export: error: --out: cannot write the artifacts into {out} "
            "(Permission denied)\n"
        )
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


def test_a_writable_out_is_left_as_it_was_for_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the export is replaced by a look at what the check left
    seen: list[bool] = []

    def look(model: object, x: object, out: Path, **kwargs: object) -> None:
        seen.append(out.exists() or out.parent.exists())
        raise onnx_export.OutputError("stop here")

    monkeypatch.setattr(onnx_export, "export_training_artifacts", look)
    # Execute
    code = main([*_EXPORT, "--out", str(tmp_path / "a" / "b")])
    # Assert: the export found no folder made by the check (it makes its own, and removes
    # them on failure), and the check's probe file is gone
    assert code == 1 and seen == [False]
    assert list(tmp_path.iterdir()) == []
