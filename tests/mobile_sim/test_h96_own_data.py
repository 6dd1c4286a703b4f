"""A model or dataset of one's own through the Python API (`MODELS`, `DATASET_LOADERS`), and a
loader's arrays refused by name when the partitioners or trainers could not take them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from torch import nn

from coordinator.aggregators import AggregateOutput, ClientUpdate
from mobile_sim import runner
from mobile_sim.data import FederatedData, load_digits_data
from mobile_sim.models import MODELS
from mobile_sim.runner import DEFAULT_MODEL, SimConfig, load_dataset, run_simulation


def _tiny_digits(root: str | None, seed: int) -> FederatedData:
    data = load_digits_data(seed=seed)
    return FederatedData(
        "tiny", data.x_train[:200], data.y_train[:200], data.x_test[:50], data.y_test[:50], 10
    )


def test_an_own_dataset_and_model_run_through_the_python_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: registered for this test only
    monkeypatch.setitem(runner.DATASET_LOADERS, "my_digits", _tiny_digits)
    monkeypatch.setitem(MODELS, "my_linear", lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    cfg = SimConfig(
        dataset="my_digits", model="my_linear", clients=10, per_round=4, rounds=2, local_epochs=1
    )

    # Execute
    result = run_simulation(cfg, progress=False)

    # Assert
    assert result.num_params == 650
    assert len(result.records) == 2 and result.final_accuracy is not None


def test_an_own_dataset_may_name_its_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setitem(DEFAULT_MODEL, "my_digits", "digits_mlp")

    # Execute + Assert: the whole name is looked up, not only its family ("my")
    assert SimConfig(dataset="my_digits", clients=10, per_round=4).model_name == "digits_mlp"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda d: d.x_train.astype(np.float64), "x_train must be a float32 array"),
        (lambda d: d.x_train[:-1], "x_train has 199 rows but y_train 200 labels"),
    ],
)
def test_an_own_dataset_with_wrong_arrays_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
    bad: Callable[[FederatedData], npt.NDArray[np.float32]],
    message: str,
) -> None:
    # Prepare
    def loader(root: str | None, seed: int) -> FederatedData:
        d = _tiny_digits(root, seed)
        return FederatedData("bad", bad(d), d.y_train, d.x_test, d.y_test, 10)

    monkeypatch.setitem(runner.DATASET_LOADERS, "bad_data", loader)

    # Execute + Assert
    with pytest.raises(ValueError, match=f"dataset 'bad_data': {message}"):
        load_dataset("bad_data")


def test_an_own_dataset_with_labels_past_num_classes_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: digits has 10 classes, the loader declares 5
    def loader(root: str | None, seed: int) -> FederatedData:
        d = _tiny_digits(root, seed)
        return FederatedData("bad", d.x_train, d.y_train, d.x_test, d.y_test, 5)

    monkeypatch.setitem(runner.DATASET_LOADERS, "five", loader)

    # Execute + Assert
    with pytest.raises(ValueError, match=r"labels outside 0\.\.4"):
        load_dataset("five")


def test_a_loader_that_returns_something_else_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    monkeypatch.setitem(runner.DATASET_LOADERS, "tuple_data", lambda root, seed: (1, 2))

    # Execute + Assert
    with pytest.raises(ValueError, match="its loader returned tuple, not a FederatedData"):
        load_dataset("tuple_data")


class _UnweightedMeanProcess:
    """The plain mean of the round's reports, counting them in a measurement."""

    def __init__(self, size: int) -> None:
        self.size = size

    def initialize(self) -> int:
        return 0

    def next(self, state: int, updates: list[ClientUpdate]) -> AggregateOutput:
        total = np.zeros(self.size, np.float32)
        for cu in updates:
            total[cu.update.indices] += cu.update.values
        seen = state + len(updates)
        return AggregateOutput(seen, total / len(updates), {"clients": len(updates), "seen": seen})


class _UnweightedMean:
    def create(self, size: int) -> _UnweightedMeanProcess:
        return _UnweightedMeanProcess(size)


def test_an_own_aggregator_runs_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setitem(runner.AGGREGATORS, "unweighted_mean", _UnweightedMean)
    cfg = SimConfig(
        dataset="digits", clients=10, per_round=4, rounds=2, local_epochs=1,
        aggregator="unweighted_mean",
    )  # fmt: skip

    # Execute
    records = run_simulation(cfg, progress=False).records

    # Assert: its state carried from round to round, its measurements in each record
    assert [r.measurements["seen"] for r in records] == [4, 8]


def test_an_unknown_aggregator_name_is_still_refused() -> None:
    # Execute + Assert
    with pytest.raises(ValueError, match="unknown aggregator 'unweighted_mean'"):
        SimConfig(dataset="digits", clients=10, per_round=4, aggregator="unweighted_mean")
