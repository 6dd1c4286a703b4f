"""s53b: a --data-root that is the wrong folder said `--data-root data is not a folder` or
`data/mnist-t10k/... not found; pass --data-root the folder holding mnist-t10k/`, without the
folder that relative path resolved to (taken from the current folder, which a script's user
may not have in mind). Both lines now name the folder as given and resolved, and the
not-a-folder line says why and what belongs there."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume

RUN = ["sim", "--rounds", "1", "--clients", "4", "--per-round", "2", "--no-progress"]


def test_a_data_root_without_the_dataset_names_the_resolved_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a relative --data-root from another current folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()

    # Execute
    code = plume([*RUN, "--dataset", "mnist", "--data-root", "data", "--out", "o"])
    err = capsys.readouterr().err

    # Assert: exit 1, one line; nothing made in --out
    assert code == 1
    assert err == (
        "plume sim: error: data/mnist-t10k/t10k-images-idx3-ubyte.gz not found; pass "
        f"--data-root the folder holding mnist-t10k/ (--data-root data is {tmp_path / 'data'})\n"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("dataset", "make", "why", "holding"),
    [
        ("mnist", False, "it does not exist", "mnist-t10k/"),
        ("shakespeare", False, "it does not exist", "tinyshakespeare/"),
        ("digits", True, "a file", "the dataset's files"),
    ],
)
def test_a_data_root_that_is_not_a_folder_says_where_and_what_belongs_there(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    dataset: str,
    make: bool,
    why: str,
    holding: str,
) -> None:
    # Prepare
    monkeypatch.chdir(tmp_path)
    if make:
        (tmp_path / "dat").write_text("not a folder")

    # Execute
    code = plume([*RUN, "--dataset", dataset, "--data-root", "dat", "--out", "o"])
    err = capsys.readouterr().err

    # Assert: a usage error
    assert code == 2
    assert err == (
        f"plume sim: error: --data-root dat is not a folder ({tmp_path / 'dat'}: {why}); give "
        f"the folder holding {holding}\n"
    )
