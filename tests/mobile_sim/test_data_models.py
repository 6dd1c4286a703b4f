"""Datasets load from local files with the stated splits; the zoo has the stated sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobile_sim.data import DataError, load_digits_data, load_mnist
from mobile_sim.models import MODELS, build_model, count_parameters


def test_mnist_split(data_root: Path) -> None:
    d = load_mnist(data_root)
    assert d.x_train.shape == (8000, 1, 28, 28) and d.x_test.shape == (2000, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    # The published label counts of t10k, split without loss.
    counts = np.bincount(np.concatenate([d.y_train, d.y_test]), minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    again = load_mnist(data_root)
    np.testing.assert_array_equal(d.y_test, again.y_test)


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="PLUME_DATA"):
        load_mnist(tmp_path)


def test_digits() -> None:
    d = load_digits_data()
    assert d.x_train.shape[1] == 64 and len(d.x_train) + len(d.x_test) == 1797
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0


def test_zoo_sizes_and_seeding() -> None:
    assert count_parameters(build_model("mnist_cnn")) == 1_663_370
    assert count_parameters(build_model("mlp")) == 199_210
    a, b = build_model("mlp", seed=3), build_model("mlp", seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert (pa == pb).all()
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet1000")
    assert "mnist_cnn" in MODELS
