"""`runner.load_dataset` for a registered loader that loads another registered dataset
(helper-139's review of 53ae750): the inner dataset's error is raised as it is, not wrapped
again in the outer loader's words."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from mobile_sim.data import DataError, FederatedData
from mobile_sim.runner import DATASET_LOADERS, load_dataset


def _missing(root: str, seed: int) -> FederatedData:
    raise FileNotFoundError(2, "No such file or directory", "nosuch_h141.npz")


def _broken(root: str, seed: int) -> FederatedData:
    raise KeyError("labels")


def _wide(root: str, seed: int) -> FederatedData:
    x, y = np.zeros((4, 2), np.float64), np.zeros(4, np.int64)
    return FederatedData(x, y, x, y)


def _outer(inner: str):  # type: ignore[no-untyped-def]
    def load(root: str, seed: int) -> FederatedData:
        return load_dataset(inner, root, seed)

    return load


@pytest.fixture
def registered() -> Iterator[None]:
    names = ["h141_missing", "h141_broken", "h141_wide"]
    loaders = {"h141_missing": _missing, "h141_broken": _broken, "h141_wide": _wide}
    DATASET_LOADERS.update(loaders)
    for name in names:
        DATASET_LOADERS[f"h141_on_{name}"] = _outer(name)
    yield
    for name in names:
        DATASET_LOADERS.pop(name, None)
        DATASET_LOADERS.pop(f"h141_on_{name}", None)


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize(
    ("inner", "kind"),
    [("h141_missing", DataError), ("h141_broken", ValueError), ("h141_wide", ValueError)],
)
def test_an_inner_dataset_error_is_raised_as_it_is(inner: str, kind: type[Exception]) -> None:
    # Before: "dataset 'h141_on_h141_missing' (its loader ...): DataError: dataset
    # 'h141_missing' (its loader ...): FileNotFoundError: ..."
    with pytest.raises(kind) as alone:
        load_dataset(inner)

    with pytest.raises(kind) as nested:
        load_dataset(f"h141_on_{inner}")

    assert str(nested.value) == str(alone.value)
    assert str(nested.value).startswith(f"dataset {inner!r}")
    assert "h141_on_" not in str(nested.value)


@pytest.mark.usefixtures("registered")
def test_the_outer_loader_own_error_is_still_named() -> None:
    def outer(root: str, seed: int) -> FederatedData:
        load_dataset("h141_wide_ok_never")  # an unknown dataset: the outer loader's mistake
        raise AssertionError

    DATASET_LOADERS["h141_outer_own"] = outer
    try:
        with pytest.raises(ValueError, match=r"^dataset 'h141_outer_own' \(its loader .*outer\): "):
            load_dataset("h141_outer_own")
    finally:
        DATASET_LOADERS.pop("h141_outer_own")
