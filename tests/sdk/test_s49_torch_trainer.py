"""`TorchTrainer`'s settings, data views, the app's module after training, and frozen layers
(s49 review, items 5, 8, 9, 11 and 12's rng).

5. `momentum` and `weight_decay` were never checked: torch refused a negative one only when
   `train` made its optimizer (for a device, after it was selected and had downloaded the
   round's model), and a NaN or inf one trained until the loss was NaN, blamed on the lr.
8. `check_data` wrapped `x[:0]` with `torch.from_numpy` only to read its dtype: a flipped view
   (negative strides) raised torch's raw ValueError, and a read-only (memory-mapped) x
   printed torch's "not writable" warning (an error under this suite's filterwarnings).
9. A module with frozen parameters (``requires_grad=False``) has another layout than the
   task's model (they are no part of it, as `spec_from_module`, which makes the coordinator's
   spec, leaves them out): the round was refused with no hint why. The refusal names them.
11. `train` left the app's module in train mode (dropout on) after `participate`.
12. `rng=None` failed mid-call with an AttributeError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from protocol.messages import Assignment, CodecParams, TensorShape, TrainingParams
from sdk import LayoutMismatchError, TrainingCancelled
from sdk.client import _check_layout
from sdk.flat import get_flat_params, spec_from_module
from sdk.trainer import TorchTrainer, evaluate

KW: dict[str, Any] = {"epochs": 1, "batch_size": 8, "lr": 0.1}


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)
    )


def _data(n: int = 24) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(1)
    return rng.random((n, 1, 4, 4), dtype=np.float32), rng.integers(0, 3, n)


# -- item 5 -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["momentum", "weight_decay"])
@pytest.mark.parametrize(
    "value", [-0.5, float("nan"), float("inf"), -float("inf"), True, "0.9", None]
)
def test_a_bad_sgd_setting_is_refused_when_the_trainer_is_made(name: str, value: Any) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=f"^{name} must be a finite number >= 0, got "):
        TorchTrainer(_model(), **{name: value})


@pytest.mark.parametrize("name", ["momentum", "weight_decay"])
@pytest.mark.parametrize("value", [0, 0.0, 0.9, 1.5, np.float32(0.5)])
def test_a_finite_non_negative_sgd_setting_trains(name: str, value: Any) -> None:
    # Prepare
    model = _model()
    x, y = _data()

    # Execute
    trainer = TorchTrainer(model, **{name: value})
    result = trainer.train(get_flat_params(model), x, y, rng=np.random.default_rng(0), **KW)

    # Assert: as torch.optim.SGD takes it (which has no upper bound on momentum)
    assert getattr(trainer, name) == float(value) and type(getattr(trainer, name)) is float
    assert result.num_examples == 24


@pytest.mark.parametrize("module", ["not a module", None, [nn.Linear(2, 2)], nn.Linear])
def test_a_module_that_is_no_torch_module_is_refused_when_the_trainer_is_made(
    module: Any,
) -> None:
    # Execute / Assert: accepted until stop 50, failing at the first train deep in torch
    with pytest.raises(TypeError, match="^module must be a torch.nn.Module, not "):
        TorchTrainer(module)


# -- item 8 -------------------------------------------------------------------------------


def test_a_flipped_view_trains_as_its_copy_does() -> None:
    # Prepare: a horizontal flip (negative strides), a common augmentation
    model = _model()
    x, y = _data()
    flipped = np.flip(x, axis=3)
    params = get_flat_params(model)

    # Execute (the same dropout masks for both)
    torch.manual_seed(5)
    got = TorchTrainer(model).train(params, flipped, y, rng=np.random.default_rng(0), **KW)
    torch.manual_seed(5)
    want = TorchTrainer(model).train(params, flipped.copy(), y, rng=np.random.default_rng(0), **KW)

    # Assert
    assert TorchTrainer(model).check_data(flipped, y) is y
    assert np.array_equal(got.params, want.params) and got.loss == want.loss


def test_read_only_memory_mapped_data_trains_without_a_warning(tmp_path: Path) -> None:
    # Prepare: the suite turns warnings into errors (pyproject's filterwarnings)
    model = _model()
    x, y = _data()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    ym = np.load(tmp_path / "y.npy", mmap_mode="r")
    params = get_flat_params(model)
    params.flags.writeable = False  # as sdk.Client passes the round's model

    # Execute (the same dropout masks for both)
    torch.manual_seed(5)
    got = TorchTrainer(model).train(params, xm, ym, rng=np.random.default_rng(0), **KW)
    torch.manual_seed(5)
    want = TorchTrainer(model).train(params.copy(), x, y, rng=np.random.default_rng(0), **KW)
    accuracy, _ = evaluate(model, params, xm, ym)

    # Assert
    assert not xm.flags.writeable
    assert np.array_equal(got.params, want.params)
    assert 0.0 <= accuracy <= 1.0


# -- item 11 ------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_the_modules_modes_are_put_back_after_training(fused: bool) -> None:
    # Prepare: an app serving predictions in eval mode; one submodule set apart
    model = _model()
    model.eval()
    model[1].train()
    x, y = _data()

    # Execute
    result = TorchTrainer(model, fused=fused).train(
        get_flat_params(model), x, y, rng=np.random.default_rng(0), **KW
    )

    # Assert: the modes as they were; the weights are the trained ones
    assert [m.training for m in model.modules()] == [False, False, True, False, False, False]
    assert np.array_equal(get_flat_params(model), result.params)
    xt = torch.from_numpy(x[:4])
    assert torch.equal(model(xt), model(xt))  # no dropout


def test_the_modes_are_put_back_when_training_raises() -> None:
    # Prepare
    model = _model()
    model.eval()
    x, y = _data()

    class _Stop:
        def is_set(self) -> bool:
            return True

    # Execute
    with pytest.raises(TrainingCancelled):
        TorchTrainer(model).train(
            get_flat_params(model), x, y, rng=np.random.default_rng(0), cancel=_Stop(), **KW
        )

    # Assert
    assert not any(m.training for m in model.modules())


# -- item 12: rng -------------------------------------------------------------------------


@pytest.mark.parametrize("rng", [None, 0, np.random.RandomState(0)])
def test_an_rng_that_is_no_generator_is_refused(rng: Any) -> None:
    # Prepare
    model = _model()
    x, y = _data()

    # Execute / Assert
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        TorchTrainer(model).train(get_flat_params(model), x, y, rng=rng, **KW)


# -- item 9 -------------------------------------------------------------------------------


def _assignment(model: nn.Module) -> Assignment:
    """A round of a task whose spec is `model`'s whole layout (as `plume coordinator
    create-task` makes it, with `spec_from_module`)."""
    return Assignment(
        task_id=3, round_id=1, base_version=0, model_name="mlp",
        spec=[TensorShape(e.name, list(e.shape)) for e in spec_from_module(model).entries],
        codec=CodecParams(), training=TrainingParams(1, 8, 0.1), deadline_unix=0.0,
        model_path="/v1/tasks/3/model", upload_path="/v1/rounds/1/updates",
        max_upload_bytes=100_000, seed=0,
    )  # fmt: skip


def test_a_layout_refusal_names_the_frozen_parameters() -> None:
    # Prepare: fine-tuning with the first layer frozen, against the whole model's task
    a = _assignment(_model())
    model = _model()
    for p in model[1].parameters():
        p.requires_grad_(False)

    # Execute
    with pytest.raises(LayoutMismatchError) as info:
        _check_layout(a, TorchTrainer(model))

    # Assert
    detail = info.value.detail
    assert "2 frozen parameters (requires_grad=False)" in detail
    assert "['1.weight', '1.bias']" in detail
    assert "Frozen parameters are not supported against a task whose model has them" in detail


def test_a_task_made_from_the_frozen_model_is_trained() -> None:
    # Prepare: the task's spec leaves the frozen layer out, as spec_from_module does
    model = _model()
    for p in model[1].parameters():
        p.requires_grad_(False)
    a = _assignment(model)
    x, y = _data()

    # Execute: the layout fits; the frozen layer is kept as it is
    _check_layout(a, TorchTrainer(model))
    layer = model[1]
    assert isinstance(layer, nn.Linear)
    frozen = layer.weight.detach().clone()
    result = TorchTrainer(model).train(
        get_flat_params(model), x, y, rng=np.random.default_rng(0), **KW
    )

    # Assert
    assert result.params.shape == (spec_from_module(model).size,)
    assert torch.equal(layer.weight, frozen)


def test_a_refusal_without_frozen_parameters_says_nothing_of_them() -> None:
    # Prepare
    other = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    a = _assignment(_model())

    # Execute
    with pytest.raises(LayoutMismatchError) as info:
        _check_layout(a, TorchTrainer(other))

    # Assert
    assert "frozen" not in info.value.detail
