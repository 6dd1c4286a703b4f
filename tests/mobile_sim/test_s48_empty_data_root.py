"""Stop 48, helper-406's review of the simulator: `plume sim --data-root ''` silently read the
current folder (`Path("")` is "."), and a dataset missing there was reported with the hint
"set PLUME_DATA to the folder holding mnist-t10k/", a variable the run had not read. An empty
--data-root is now a usage error (exit status 2), as an empty --out is, and
`mobile_sim.data.data_root("")` refuses it too; "." still names the current folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.data import data_root


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_data_root_is_a_usage_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    given: str,
) -> None:
    # Prepare: an empty current folder, which the run used to take for the data folder
    monkeypatch.chdir(tmp_path)

    # Execute
    code = plume(["sim", "--data-root", given, "--rounds", "1", "--out", "run"])

    # Assert: one usage line, before anything is loaded or made
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "plume sim: error: --data-root must name a folder (got an empty one); give . for the "
        "current folder\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_library_refuses_an_empty_data_folder_and_keeps_dot() -> None:
    with pytest.raises(ValueError, match=r"the data folder must be named \(got ''\)"):
        data_root("")
    assert data_root(".") == Path(".")
    assert data_root(Path("")) == Path(".")  # a Path is never empty: Path("") is "."
