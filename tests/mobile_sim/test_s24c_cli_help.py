"""`plume sim --help` says the default of every flag that has none (--ort-artifacts,
--ort-tier, --attack, --secure-upload-budget showed nothing), and --over-selection out of
range echoes the value it got."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        ("--ort-artifacts DIR", "(default: none; --ort-fraction and --ort-tier need it)"),
        ("--ort-tier {low,mid,high}", "(default: none, every device trains on torch unless"),
        ("--attack NAME[:k=v,...]", "(default: none, every device honest)"),
        ("--secure-upload-budget BYTES", "(default: none, |S_r| from --secure-fraction)"),
    ],
)
def test_a_flag_without_a_default_says_so(
    capsys: pytest.CaptureFixture[str], flag: str, said: str
) -> None:
    # Execute
    with pytest.raises(SystemExit):
        plume(["sim", "--help"])
    text = capsys.readouterr().out

    # Assert: the flag's own help (up to the next option) says its default
    start = text.index(f"  {flag}")
    end = text.find("\n  -", start + 1)
    assert said in " ".join(text[start:end].split())


@pytest.mark.parametrize("value", ["0.5", "11", "nan"])
def test_over_selection_out_of_range_echoes_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code = plume(["sim", "--over-selection", value, "--out", str(tmp_path / "run")])

    err = capsys.readouterr().err
    assert code == 2
    shown = f"{float(value):g}"
    assert err.strip() == f"plume sim: error: --over-selection must be in [1, 10], got {shown}"
    assert not (tmp_path / "run").exists()
