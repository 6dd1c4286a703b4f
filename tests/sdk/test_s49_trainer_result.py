"""What a `LocalTrainer` hands back is checked before the update is computed (s49 review,
items 1, 3 and 4).

1. A trainer that updated `params` in place and returned it uploaded a zero update, weighted
   by its examples, and `participate` reported success: the client passed its own array and
   computed ``trained - params``. The trainer now gets a read-only view: a numpy write raises
   (reported naming the rule), a write numpy's flag does not stop (``torch.from_numpy``) is
   found when `train` returns, and a result that is the client's array is refused.
3. A result shaped (d, 1) broadcast in ``trained - params`` into a d x d array before the
   encoder's shape check; now refused by shape (and dtype) first, naming the trainer.
4. `num_examples` (the update's FedAvg weight) was taken as given: 10**9 from 8 examples,
   0 (the update dropped while the device counted it as sent), 2.5 and True.

The plain round's path and the secure round's (`_delta_update`) both go through `_train`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import torch

from protocol.messages import Assignment, CodecParams, TensorShape, TrainingParams
from sdk import Client, TrainResult
from sdk.client import _delta_update, _train
from tests.coordinator.test_service_support import SoftmaxTrainer, local_data
from tests.sdk.test_h177_chain_fallback import coordinator  # noqa: F401 (a fixture)

X, Y = local_data(0)
D = 170  # the coordinator fixture's model: w (10, 16) and b (10,)


class _Trainer:
    """A LocalTrainer whose result comes from `make(params, x) -> TrainResult`."""

    def __init__(self, make: Callable[[npt.NDArray[np.float32], Any], TrainResult]) -> None:
        self.make = make

    def train(
        self,
        params: npt.NDArray[np.float32],
        x: Any,
        y: Any,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> TrainResult:
        return self.make(params, x)


class NumpySGD:
    """Plain numpy SGD written in place: ``w -= lr * g`` on the array it is given."""

    def train(
        self,
        params: npt.NDArray[np.float32],
        x: Any,
        y: Any,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> TrainResult:
        w = params
        w -= np.float32(lr * 0.1)
        return TrainResult(w, len(x), 0.7)


def _through_torch(params: npt.NDArray[np.float32], x: Any) -> TrainResult:
    """Writes through ``torch.from_numpy`` (which ignores numpy's read-only flag, with a
    warning torch gives once per process), then returns a copy: a zero update, before."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = torch.from_numpy(params)
    t.add_(0.01)
    return TrainResult(t.clone().numpy(), len(x), 0.5)


def _assignment() -> Assignment:
    return Assignment(
        task_id=1, round_id=5, base_version=0, model_name="softmax",
        spec=[TensorShape("w", [10, 16]), TensorShape("b", [10])],
        codec=CodecParams(topk=0.5, bits=8), training=TrainingParams(1, 10, 0.1),
        deadline_unix=0.0, model_path="/v1/tasks/1/model", upload_path="/v1/rounds/5/updates",
        max_upload_bytes=100_000, seed=0,
    )  # fmt: skip


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    """A client that makes no request (the unit tests call the round's training step)."""
    transport = httpx.MockTransport(lambda r: httpx.Response(500))
    with Client("http://coordinator.test", tmp_path / "app", transport=transport) as c:
        yield c


def _step(client: Client, path: str, trainer: Any, params: npt.NDArray[np.float32]) -> Any:
    """The round's training step: a plain round's `_train`, or a secure round's `update`."""
    core, a = client._core, _assignment()
    if path == "plain":
        return _train(core, a, params, trainer, X, Y)
    return _delta_update(core, a, trainer, X, Y)(params)


PATHS = pytest.mark.parametrize("path", ["plain", "secure"])


def _params() -> npt.NDArray[np.float32]:
    return np.random.default_rng(0).normal(0, 0.1, D).astype(np.float32)


# -- item 1: params written in place ------------------------------------------------------


def test_participate_refuses_a_trainer_that_trains_in_place(
    coordinator: tuple[str, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    # Prepare
    url, task = coordinator

    with Client(url, tmp_path / "app") as client:
        client.register()

        # Execute: numpy SGD on the array it was given
        with pytest.raises(ValueError, match="must not update `params` in place") as info:
            client.participate(NumpySGD(), X, Y, task_id=task, max_wait_s=20)

        # Assert: named, nothing encoded or sent; the same round then trains with a copy
        assert "trainer NumpySGD wrote into the params array it was given" in str(info.value)
        assert "params.copy()" in str(info.value)
        assert client._core.store.load_pending() is None
        report = client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
        assert report is not None and report.receipt.accepted and report.round_id == 1


@PATHS
def test_the_trainer_gets_a_read_only_view_and_the_model_is_untouched(
    client: Client, path: str
) -> None:
    # Prepare
    params = _params()
    before = params.copy()
    seen: list[npt.NDArray[np.float32]] = []

    def look(p: npt.NDArray[np.float32], x: Any) -> TrainResult:
        seen.append(p)
        return TrainResult(p + np.float32(0.5), len(x), 0.1)

    # Execute
    out = _step(client, path, _Trainer(look), params)

    # Assert: a read-only view of the client's array; the update is the step taken
    assert not seen[0].flags.writeable and np.shares_memory(seen[0], params)
    assert np.array_equal(params, before) and params.flags.writeable
    delta = out[0] - params if path == "plain" else out[0]
    np.testing.assert_allclose(delta, 0.5, rtol=1e-6)


@PATHS
def test_an_in_place_numpy_write_is_refused_naming_the_rule(client: Client, path: str) -> None:
    # Prepare
    params = _params()
    before = params.copy()

    # Execute
    with pytest.raises(ValueError, match="must not update `params` in place") as info:
        _step(client, path, NumpySGD(), params)

    # Assert: numpy's own error is the cause; the client's array is as downloaded
    assert isinstance(info.value.__cause__, ValueError)
    assert "read-only" in str(info.value.__cause__)
    assert np.array_equal(params, before)


@PATHS
def test_a_write_through_torch_is_found_when_train_returns(client: Client, path: str) -> None:
    # Execute
    with pytest.raises(ValueError, match="the array changed during its train call"):
        _step(client, path, _Trainer(_through_torch), _params())


@PATHS
@pytest.mark.parametrize(
    "returned",
    [lambda p: p, lambda p: p[:], lambda p: p.reshape(-1, 1)[:, 0]],
    ids=["itself", "a-slice", "a-reshaped-view"],
)
def test_a_result_sharing_the_clients_array_is_refused(
    client: Client, path: str, returned: Callable[[Any], Any]
) -> None:
    # Execute
    trainer = _Trainer(lambda p, x: TrainResult(returned(p), len(x), 0.1))
    with pytest.raises(ValueError, match=r"are \(a view of\) the params array it was given"):
        _step(client, path, trainer, _params())


# -- item 3: the result's shape and dtype, before the subtraction ------------------------


@PATHS
@pytest.mark.parametrize(
    ("shape", "words"),
    [((D, 1), r"shape \(170, 1\)"), ((1, D), r"shape \(1, 170\)"), ((D - 1,), r"shape \(169,\)")],
)
def test_a_result_of_another_shape_is_refused_before_subtracting(
    client: Client, path: str, shape: tuple[int, ...], words: str
) -> None:
    # Prepare: a column (d, 1) broadcast in trained - params into d x d before
    trainer = _Trainer(lambda p, x: TrainResult(np.zeros(shape, np.float32), len(x), 0.1))

    # Execute
    with pytest.raises(ValueError, match=f"trainer _Trainer returned params of {words}"):
        _step(client, path, trainer, _params())


@PATHS
@pytest.mark.parametrize(
    "value",
    [np.array(["x"] * D), np.zeros(D, bool), np.zeros(D, complex), [object()] * D],
    ids=["str", "bool", "complex", "object"],
)
def test_a_result_that_is_no_float_array_is_refused(client: Client, path: str, value: Any) -> None:
    # Execute
    trainer = _Trainer(lambda p, x: TrainResult(value, len(x), 0.1))
    with pytest.raises(TypeError, match="trainer _Trainer returned params of dtype"):
        _step(client, path, trainer, _params())


@PATHS
def test_float64_and_list_results_are_cast(client: Client, path: str) -> None:
    # Prepare
    params = _params()

    values: list[Any] = [params.astype(np.float64) + 0.25, list(params + np.float32(0.25))]
    for value in values:
        # Execute
        trainer = _Trainer(lambda p, x, v=value: TrainResult(v, 8, 0.1))  # type: ignore[misc]
        out = _step(client, path, trainer, params)

        # Assert
        delta = (out[0] - params) if path == "plain" else out[0]
        np.testing.assert_allclose(delta, 0.25, rtol=1e-5)


@PATHS
def test_a_result_that_is_no_train_result_is_refused(client: Client, path: str) -> None:
    # Execute
    trainer = _Trainer(lambda p, x: (p + 1, len(x), 0.1))  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="trainer _Trainer.train returned tuple, not a"):
        _step(client, path, trainer, _params())


# -- item 4: num_examples -----------------------------------------------------------------


@PATHS
@pytest.mark.parametrize(
    ("n", "error", "words"),
    [
        (
            10**9,
            ValueError,
            "num_examples=1000000000 \\(from 40 examples\\): it must be from 1 to 40",
        ),
        (41, ValueError, "num_examples=41 \\(from 40 examples\\)"),
        (0, ValueError, "num_examples=0 \\(from 40 examples\\)"),
        (-3, ValueError, "num_examples=-3"),
        (2.5, TypeError, "num_examples=2.5 \\(float\\): it must be an int"),
        (40.0, TypeError, "num_examples=40.0 \\(float\\)"),
        (True, TypeError, "num_examples=True \\(bool\\)"),
        (np.bool_(True), TypeError, "num_examples=.*True.* \\(bool"),
        ("8", TypeError, "num_examples='8' \\(str\\)"),
    ],
)
def test_num_examples_must_be_an_int_from_1_to_the_examples_passed(
    client: Client, path: str, n: Any, error: type[Exception], words: str
) -> None:
    # Prepare
    trainer = _Trainer(lambda p, x: TrainResult(p + np.float32(0.01), n, 0.1))

    # Execute
    with pytest.raises(error, match=f"trainer _Trainer returned {words}"):
        _step(client, path, trainer, _params())


@PATHS
@pytest.mark.parametrize("n", [1, 40, np.int64(8), np.uint16(3)])
def test_integer_num_examples_are_taken_as_int(client: Client, path: str, n: Any) -> None:
    # Execute
    trainer = _Trainer(lambda p, x: TrainResult(p + np.float32(0.01), n, 0.1))
    out = _step(client, path, trainer, _params())

    # Assert
    assert out[1] == int(n) and type(out[1]) is int


def test_participate_refuses_a_weight_past_the_examples_before_anything_is_sent(
    coordinator: tuple[str, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    # Prepare
    url, task = coordinator
    liar = _Trainer(lambda p, x: TrainResult(p + np.float32(0.01), 10**9, 0.5))

    with Client(url, tmp_path / "app") as client:
        client.register()

        # Execute
        with pytest.raises(ValueError, match="returned num_examples=1000000000"):
            client.participate(liar, X, Y, task_id=task, max_wait_s=20)

        # Assert: no upload pending or sent
        assert client._core.store.load_pending() is None
        sent = [row.get("up", {}).get("payload_bytes", 0) for row in client.bandwidth.values()]
        assert not any(sent)


# -- encode_update, the app's own path ------------------------------------------------------


def test_encode_update_refuses_the_same_array_and_a_zero_weight(client: Client) -> None:
    # Prepare
    a, params = _assignment(), _params()

    # Execute / Assert
    with pytest.raises(ValueError, match=r"encode_update: trained that are \(a view of\)"):
        client.encode_update(a, params, params, 8)
    with pytest.raises(ValueError, match="encode_update: trained of shape \\(170, 1\\)"):
        client.encode_update(a, params, params[:, None] + 1, 8)
    with pytest.raises(ValueError, match="encode_update: num_examples=0"):
        client.encode_update(a, params, params + 1, 0)
    with pytest.raises(TypeError, match="encode_update: num_examples=2.5"):
        client.encode_update(a, params, params + 1, 2.5)  # type: ignore[arg-type]
    assert client._core.store.load_pending() is None
    assert client.encode_update(a, params, params + 1, 8).round_id == 5
