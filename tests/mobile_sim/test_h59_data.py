"""MNIST files that are damaged on disk are a DataError naming the file, not a crash elsewhere."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim.data import DataError, data_root, load_mnist

_IMAGES = "t10k-images-idx3-ubyte.gz"
_LABELS = "t10k-labels-idx1-ubyte.gz"


def _idx(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes()


def _folder(tmp_path: Path, images: bytes, labels: bytes) -> Path:
    base = tmp_path / "mnist-t10k"
    base.mkdir()
    (base / _IMAGES).write_bytes(images)
    (base / _LABELS).write_bytes(labels)
    return tmp_path


def _real(name: str) -> bytes:
    return (data_root() / "mnist-t10k" / name).read_bytes()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda raw: raw[:5000], "Compressed file ended"),  # an EOFError traceback before
        (lambda raw: b"not gzip at all", "Not a gzipped file"),  # no file named before
    ],
)
def test_a_truncated_or_foreign_images_file_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: object, reason: str
) -> None:
    # Prepare
    root = _folder(tmp_path, damage(_real(_IMAGES)), _real(_LABELS))  # type: ignore[operator]
    # Execute / Assert
    with pytest.raises(DataError, match=f"{_IMAGES}: not a readable gzip file.*{reason}"):
        load_mnist(root)
    code = plume(["sim", "--dataset", "mnist", "--model", "mlp", "--rounds", "1",
                  "--data-root", str(root)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and _IMAGES in err and "Traceback" not in err  # as for a missing file


def test_labels_outside_the_ten_classes_are_refused_at_load(tmp_path: Path) -> None:
    # Prepare: 3 blank images whose labels say 0, 12, 1 (the models have 10 outputs: label 12
    # failed inside torch's loss mid-round)
    images = gzip.compress(_idx(2051, np.zeros((3, 28, 28), np.uint8)))
    labels = gzip.compress(_idx(2049, np.array([0, 12, 1], np.uint8)))
    root = _folder(tmp_path, images, labels)
    # Execute / Assert
    with pytest.raises(DataError, match="labels must be 0..9, found 12"):
        load_mnist(root, train_size=2)
