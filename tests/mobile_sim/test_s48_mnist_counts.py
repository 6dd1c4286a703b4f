"""Stop 48, helper-406's review of the simulator: MNIST files that are valid but do not fit
the run were errors that named nothing.

- A valid but short file (20 images, or 0) was `plume sim: error: train_size must be in
  1..19` with exit status 2: `plume sim` has no train_size option, and the file was not
  named. Now a `DataError` (exit status 1) naming the file, how many images it holds and
  how many a run needs.
- Images and labels of different counts were "MNIST images and labels differ in count",
  naming no folder, no file and no count, where every other MNIST `DataError` names its file.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim.data import DataError, load_mnist

_IMAGES = "t10k-images-idx3-ubyte.gz"
_LABELS = "t10k-labels-idx1-ubyte.gz"


def _mnist(root: Path, images: int, labels: int) -> Path:
    """A data folder whose mnist-t10k/ holds `images` blank images and `labels` labels."""
    base = root / "mnist-t10k"
    base.mkdir(parents=True)
    for name, magic, array in (
        (_IMAGES, 2051, np.zeros((images, 28, 28), np.uint8)),
        (_LABELS, 2049, (np.arange(labels) % 10).astype(np.uint8)),
    ):
        header = struct.pack(f">{1 + array.ndim}i", magic, *array.shape)
        (base / name).write_bytes(gzip.compress(header + array.tobytes()))
    return root


def _sim(root: Path, out: Path) -> list[str]:
    return ["sim", "--dataset", "mnist", "--model", "mlp", "--rounds", "1", "--no-progress",
            "--data-root", str(root), "--out", str(out)]  # fmt: skip


@pytest.mark.parametrize("count", [20, 0])
def test_a_short_mnist_file_is_a_data_error_naming_it_and_its_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], count: int
) -> None:
    # Prepare: a valid file of `count` images (a run trains on 8,000 and tests on the rest)
    root = _mnist(tmp_path / "data", count, count)
    file = root / "mnist-t10k" / _IMAGES
    expected = (
        f"{file}: {count} images, but 8,001 or more are needed (8,000 to train on and at "
        "least 1 to test); MNIST t10k has 10,000"
    )

    # Execute / Assert: the library's error
    with pytest.raises(DataError) as caught:
        load_mnist(root)
    assert str(caught.value) == expected
    with pytest.raises(DataError, match=f"{count} images, but 26 or more are needed"):
        load_mnist(root, train_size=25)

    # Execute / Assert: `plume sim`'s line, a data problem's status, no --out left behind
    code = plume(_sim(root, tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 1, err
    assert err == f"plume sim: error: {expected}\n"
    assert not (tmp_path / "out").exists()


def test_images_and_labels_of_different_counts_name_the_files_and_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: 20 images, 19 labels
    root = _mnist(tmp_path / "data", 20, 19)
    expected = (
        f"{root / 'mnist-t10k'}: {_IMAGES} holds 20 images but {_LABELS} 19 labels; they "
        "must be the same count"
    )

    # Execute / Assert
    with pytest.raises(DataError) as caught:
        load_mnist(root, train_size=10)
    assert str(caught.value) == expected
    code = plume(_sim(root, tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 1, err
    assert err == f"plume sim: error: {expected}\n"


def test_a_train_size_below_one_is_still_the_callers_mistake(tmp_path: Path) -> None:
    # A programming mistake, found before any file is read
    with pytest.raises(ValueError, match="train_size must be at least 1, got 0"):
        load_mnist(tmp_path / "nowhere", train_size=0)
