"""Datasets read from local files only (../shared/data or $PLUME_DATA); nothing is downloaded."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["FederatedData", "data_root", "load_mnist", "load_digits_data", "DataError"]

# MNIST's published training-set mean and std; the same normalisation for every client.
_MNIST_MEAN, _MNIST_STD = 0.1307, 0.3081


class DataError(RuntimeError):
    """A dataset is missing or malformed on disk."""


@dataclass(frozen=True, slots=True)
class FederatedData:
    """Arrays ready to partition: x float32[N, ...], y int64[N]."""

    name: str
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]
    num_classes: int


def data_root(root: str | Path | None = None) -> Path:
    """`root`, else $PLUME_DATA, else `<repo>/../shared/data`. An empty `root` is refused (a
    ValueError): `Path("")` is the current folder, which a missing value is not meant to be."""
    if root is not None:
        if isinstance(root, str) and not root.strip():
            raise ValueError(
                f"the data folder must be named (got {root!r}); give . for the current folder"
            )
        return Path(root)
    env = os.environ.get("PLUME_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _read_idx(path: Path, magic: int, ndim: int) -> npt.NDArray[np.uint8]:
    if not path.exists():
        raise DataError(f"{path} not found; set PLUME_DATA to the folder holding mnist-t10k/")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, damaged
        raise DataError(f"{path}: not a readable gzip file ({exc})") from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    got_magic, *dims = struct.unpack(f">{1 + ndim}i", raw[:header])
    if got_magic != magic:
        raise DataError(f"{path}: IDX magic {got_magic}, expected {magic}")
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path}: {len(raw) - header} data bytes, header declares {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(
    root: str | Path | None = None, *, train_size: int = 8000, seed: int = 0
) -> FederatedData:
    """MNIST t10k split into `train_size` train and the rest test images, by a seeded shuffle.

    x: float32[N, 1, 28, 28], normalised with MNIST's mean and std.
    """
    if not 0 < train_size:
        raise ValueError(f"train_size must be at least 1, got {train_size}")
    base = data_root(root) / "mnist-t10k"
    images_path = base / "t10k-images-idx3-ubyte.gz"
    labels_path = base / "t10k-labels-idx1-ubyte.gz"
    images = _read_idx(images_path, 2051, 3)
    labels = _read_idx(labels_path, 2049, 1)
    if len(images) != len(labels):
        raise DataError(
            f"{base}: {images_path.name} holds {len(images):,} images but {labels_path.name} "
            f"{len(labels):,} labels; they must be the same count"
        )
    if labels.size and int(labels.max()) > 9:
        # The models have 10 outputs: such a label failed inside torch mid-round.
        raise DataError(f"{base}: MNIST labels must be 0..9, found {int(labels.max())}")
    if len(images) <= train_size:
        # A valid but short file: a data problem, named with its counts (it was a ValueError
        # about train_size, an option `plume sim` does not have; stop 48).
        raise DataError(
            f"{images_path}: {len(images):,} images, but {train_size + 1:,} or more are needed "
            f"({train_size:,} to train on and at least 1 to test); MNIST t10k has 10,000"
        )
    x = ((images.astype(np.float32) / 255.0 - _MNIST_MEAN) / _MNIST_STD)[:, None, :, :]
    y = labels.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    tr, te = order[:train_size], order[train_size:]
    return FederatedData("mnist", x[tr], y[tr], x[te], y[te], 10)


def load_digits_data(*, test_fraction: float = 0.2, seed: int = 0) -> FederatedData:
    """scikit-learn's bundled 8x8 digits (1,797 images), x float32[N, 64] scaled to [0, 1]."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    te, tr = order[:n_test], order[n_test:]
    return FederatedData("digits", x[tr], y[tr], x[te], y[te], 10)
