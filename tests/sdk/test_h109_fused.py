"""TorchTrainer's autograd-free step (`fused=True`, sdk/_fused.py): the same SGD as the autograd
path to float tolerance, used only for the chains it supports, and the same loop behaviour
(batches, loss, IGNORE_INDEX, divergence, cancel)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from sdk._fused import FUSED_UPDATE_MIN_WEIGHTS, fused_chain
from sdk.flat import get_flat_params
from sdk.trainer import IGNORE_INDEX, TorchTrainer, TrainingCancelled, onednn_linear_available

# The backends-agreement tolerance (tests/mobile_sim/test_backends.py `_assert_same`).
ATOL, RTOL = 1e-5, 1e-4


def _run(
    module: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fused: bool,
    epochs: int = 2,
    batch_size: int = 4,
    lr: float = 0.05,
    seed: int = 0,
    **kw: Any,
) -> tuple[Any, bool]:
    """(the result of one train call from the module's current parameters, whether the fused
    path ran: it leaves every `.grad` at None, autograd's last step leaves gradients)."""
    trainer = TorchTrainer(module, fused=fused, **kw)
    params = get_flat_params(module)
    torch.manual_seed(seed)  # dropout draws alike on both paths
    for p in module.parameters():
        p.grad = None
    result = trainer.train(
        params, x, y, epochs=epochs, batch_size=batch_size, lr=lr, rng=np.random.default_rng(seed)
    )
    used = all(p.grad is None for p in module.parameters())
    return result, used


def _agree(module: nn.Module, x: np.ndarray, y: np.ndarray, **kw: Any) -> tuple[Any, Any]:
    start = get_flat_params(module)
    want, fused_ran = _run(module, x, y, fused=False, **kw)
    assert not fused_ran
    from sdk.flat import set_flat_params

    set_flat_params(module, start)
    got, used = _run(module, x, y, fused=True, **kw)
    assert used, "the fused path did not run"
    np.testing.assert_allclose(got.params - start, want.params - start, atol=ATOL, rtol=RTOL)
    assert got.num_examples == want.num_examples
    assert got.loss == pytest.approx(want.loss, rel=1e-5, abs=1e-6, nan_ok=True)
    return got, want


def _seeded(module_fn: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    module: nn.Module = module_fn()
    return module


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    channels=st.integers(1, 3),
    size=st.sampled_from([4, 6, 8]),
    filters=st.integers(1, 5),
    kernel=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    bias=st.booleans(),
    relu_before_pool=st.booleans(),
    hidden=st.sampled_from([0, 7]),
    n=st.integers(1, 11),
    batch=st.integers(1, 5),
    ignore=st.booleans(),
)
def test_random_conv_chains_train_as_autograd_does(
    seed: int,
    channels: int,
    size: int,
    filters: int,
    kernel: int,
    stride: int,
    bias: bool,
    relu_before_pool: bool,
    hidden: int,
    n: int,
    batch: int,
    ignore: bool,
) -> None:
    # Prepare: conv -> [relu -> pool | pool -> relu] -> flatten -> [linear -> relu] -> linear,
    # random inputs with few levels (ties in the pooling windows), labels partly skipped.
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1
    if out % 2:
        stride = 1
        out = size
    act = [nn.ReLU(), nn.MaxPool2d(2)] if relu_before_pool else [nn.MaxPool2d(2), nn.ReLU()]
    width = filters * (out // 2) ** 2
    head: list[nn.Module] = [nn.Linear(width, hidden, bias=bias), nn.ReLU()] if hidden else []
    classes = 3
    module = _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(channels, filters, kernel, stride=stride, padding=pad, bias=bias),
            *act,
            nn.Flatten(),
            *head,
            nn.Linear(hidden or width, classes),
        ),
        seed,
    )
    rng = np.random.default_rng(seed)
    with torch.no_grad():  # integer weights and inputs: ties between different patches
        conv = module[0]
        conv.weight.copy_(torch.from_numpy(rng.integers(-1, 2, conv.weight.shape)))
        if conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(rng.integers(-1, 2, conv.bias.shape)))
    x = rng.integers(-2, 3, size=(n, channels, size, size)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    if ignore:
        y[rng.random(n) < 0.4] = IGNORE_INDEX
        y[0] = 0  # at least one counted target
    # Execute / Assert
    _agree(module, x, y, batch_size=batch, lr=0.05)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits_data()
    return d.x_train[:60], d.y_train[:60]


def test_a_digits_cnn_and_mlp_train_as_autograd_does(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    images = x.reshape(-1, 1, 8, 8)
    cnn = _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Flatten(),
            nn.Linear(64, 10),
        ),
        0,
    )
    _agree(cnn, images, y, epochs=3, batch_size=10)
    _agree(_seeded(lambda: build_model("digits_mlp", seed=None), 1), x, y, batch_size=10)


def test_the_mnist_cnn_declares_its_chain_and_its_large_layer_takes_the_folded_update() -> None:
    # Prepare: the zoo's MnistCNN (a custom forward, its chain declared) on MNIST-sized inputs; fc1 has
    # 1.6M weights, so with fold_update it takes the in-place addmm_ update.
    module = build_model("mnist_cnn")
    assert module.fc1.weight.numel() >= FUSED_UPDATE_MIN_WEIGHTS
    chain = fused_chain(module, onednn=True, fold_update=True)
    assert chain is not None and chain.fold_update
    assert [op.kind for op in chain.ops] == [
        "conv", "pool", "relu", "conv", "pool", "relu", "flatten", "linear", "relu", "linear"
    ]  # fmt: skip
    rng = np.random.default_rng(3)
    x = rng.random((12, 1, 28, 28), dtype=np.float32)
    x[x < 0.6] = 0.0  # blank background: many equal values in the pooling windows
    y = rng.integers(0, 10, size=12)
    # Execute / Assert: with oneDNN (fast_linear) and with BLAS
    _agree(module, x, y, epochs=1, batch_size=5, fold_update=True)
    _agree(module, x, y, epochs=1, batch_size=5, fast_linear=False, fold_update=True)


def test_by_default_large_layers_take_onednn_s_weight_gradient() -> None:
    # The default (fold_update off), which bench/explore_cnn_speed.py "fused" times as fused.
    module = build_model("mnist_cnn")
    rng = np.random.default_rng(4)
    x = rng.random((8, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=8)
    _agree(module, x, y, epochs=1, batch_size=4)
    _agree(module, x, y, epochs=1, batch_size=4, fast_linear=False)
    if onednn_linear_available():
        # One step (one batch of 8): every kernel and its operands are autograd's, so the
        # update is bit for bit the autograd path's.
        got, want = _agree(module, x, y, epochs=1, batch_size=8)
        np.testing.assert_array_equal(got.params, want.params)


@pytest.mark.parametrize(("groups", "dilation", "stride"), [(2, 1, 1), (1, 2, 1), (2, 2, 2)])
def test_grouped_dilated_and_strided_convolutions_train_as_autograd_does(
    groups: int, dilation: int, stride: int
) -> None:
    module = _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=2, dilation=dilation, stride=stride, groups=groups),
            nn.ReLU(),
            nn.Conv2d(4, 4, 1, groups=groups),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * (((8 + 4 - 2 * dilation - 1) // stride + 1) // 2) ** 2, 3),
        ),
        11,
    )
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 2, 8, 8)).astype(np.float32)
    _agree(module, x, rng.integers(0, 3, size=7), batch_size=3)


def test_a_large_linear_layer_without_bias_in_an_mlp() -> None:
    module = _seeded(
        lambda: nn.Sequential(nn.Linear(256, 256, bias=False), nn.ReLU(), nn.Linear(256, 4)), 2
    )
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, 256)).astype(np.float32)
    _agree(module, x, rng.integers(0, 4, size=9), batch_size=4)


class _Chain(nn.Module):
    def __init__(self, extra: str = "") -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, 3)
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.relu(self.conv(x)))
        if self.extra == "scale":
            h = h * 2
        if self.extra == "skip":
            h = h + self.pool(x).repeat(1, 2, 1, 1)
        if self.extra == "branch" and len(x) > 1:
            h = self.relu(h)
        out: torch.Tensor = self.fc(self.flat(h))
        return out

    def fused_layers(self) -> list[nn.Module] | None:
        # Declared only when forward is exactly the chain (None: not declared).
        return None if self.extra else [self.conv, self.relu, self.pool, self.flat, self.fc]


class _Linear(nn.Linear):
    pass


def _unsupported() -> dict[str, Any]:
    """name -> (module factory, input shape, trainer kwargs)."""
    seq = nn.Sequential
    return {
        "dropout": (lambda: seq(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 3)), (1, 4, 4), {}),
        "tanh": (
            lambda: seq(nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3)),
            (16,),
            {},
        ),
        "batchnorm": (
            lambda: seq(
                nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 3)
            ),
            (1, 4, 4),
            {},
        ),  # fmt: skip
        "avgpool": (lambda: seq(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3)), (1, 4, 4), {}),
        "maxpool3": (lambda: seq(nn.MaxPool2d(3), nn.Flatten(), nn.Linear(1, 3)), (1, 3, 3), {}),
        "same_padding": (
            lambda: seq(nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten(), nn.Linear(32, 3)),
            (1, 4, 4),
            {},
        ),  # fmt: skip
        "reflect_padding": (
            lambda: seq(
                nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
                nn.Flatten(),
                nn.Linear(32, 3),
            ),
            (1, 4, 4),
            {},
        ),  # fmt: skip
        "linear_subclass": (lambda: seq(_Linear(16, 3)), (16,), {}),
        "odd_pool_input": (
            lambda: seq(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 3)),
            (1, 5, 5),
            {},
        ),
        "ends_in_relu": (lambda: seq(nn.Linear(4, 3), nn.ReLU()), (4,), {}),
        "shared_layer": (lambda: (lambda fc: seq(fc, nn.ReLU(), fc))(nn.Linear(3, 3)), (3,), {}),
        "forward_with_an_op": (lambda: _Chain("scale"), (1, 4, 4), {}),
        "forward_with_a_skip": (lambda: _Chain("skip"), (1, 4, 4), {}),
        "data_dependent_forward": (lambda: _Chain("branch"), (1, 4, 4), {}),
        "momentum": (lambda: _Chain(), (1, 4, 4), {"momentum": 0.9}),
        "weight_decay": (lambda: _Chain(), (1, 4, 4), {"weight_decay": 1e-3}),
        "fused_off": (lambda: _Chain(), (1, 4, 4), {"fused": False}),
    }


@pytest.mark.parametrize("name", sorted(_unsupported()))
def test_unsupported_models_and_settings_train_through_autograd(name: str) -> None:
    # Prepare
    factory, shape, kw = _unsupported()[name]
    module = _seeded(factory, 5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, *shape)).astype(np.float32)
    classes = 3
    y = rng.integers(0, classes, size=6)
    start = get_flat_params(module)
    kw = {"fused": True, **kw}
    # Execute: the trainer as configured, then the autograd path explicitly
    got, used = _run(module, x, y, **kw)
    from sdk.flat import set_flat_params

    set_flat_params(module, start)
    want, _ = _run(module, x, y, **{**kw, "fused": False})
    # Assert: not the fused path, and the autograd path's exact result
    assert not used
    np.testing.assert_array_equal(got.params, want.params)
    assert got.loss == want.loss or (np.isnan(got.loss) and np.isnan(want.loss))


def test_a_frozen_parameter_hooks_or_another_loss_fall_back() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=6)
    assert _run(_seeded(_Chain, 6), x, y, fused=True)[1]  # the plain chain is fused

    frozen = _seeded(_Chain, 6)
    frozen.conv.bias.requires_grad_(False)
    assert fused_chain(frozen, onednn=False) is None

    hooked = _seeded(_Chain, 6)
    calls: list[int] = []
    handle = hooked.fc.register_forward_hook(lambda *a: calls.append(1))
    assert not _run(hooked, x, y, fused=True, batch_size=3, epochs=1)[1]
    assert len(calls) == 1 + 2  # the hook saw the shape probe and both steps
    handle.remove()
    assert _run(hooked, x, y, fused=True)[1]

    smoothed = TorchTrainer(_seeded(_Chain, 6))
    smoothed.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    smoothed.train(
        get_flat_params(smoothed.module), x, y, epochs=1, batch_size=3, lr=0.1,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    assert all(p.grad is not None for p in smoothed.module.parameters())


def test_the_cached_chain_follows_a_replaced_layer() -> None:
    # A trainer that fused a chain, whose module then gets a layer swapped for an unsupported
    # one, trains the new model through autograd.
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=6)
    module = _seeded(_Chain, 7)
    trainer = TorchTrainer(module)
    trainer.train(get_flat_params(module), x, y, epochs=1, batch_size=3, lr=0.1,
                  rng=np.random.default_rng(0))  # fmt: skip
    assert all(p.grad is None for p in module.parameters())
    module.relu = nn.Tanh()  # type: ignore[assignment]
    trainer.train(get_flat_params(module), x, y, epochs=1, batch_size=3, lr=0.1,
                  rng=np.random.default_rng(0))  # fmt: skip
    assert all(p.grad is not None for p in module.parameters())


class _CancelAfter:
    """A cancel flag that reads as set from its `k`-th read on (reads happen before steps)."""

    def __init__(self, k: int) -> None:
        self.k, self.reads = k, 0

    def is_set(self) -> bool:
        self.reads += 1
        return self.reads > self.k


@pytest.mark.parametrize("k", [0, 1, 4])
def test_cancel_is_read_before_each_fused_step(k: int) -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((10, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=10)
    module = _seeded(_Chain, 8)
    trainer = TorchTrainer(module)
    flag = _CancelAfter(k)
    with pytest.raises(TrainingCancelled) as info:
        trainer.train(get_flat_params(module), x, y, epochs=2, batch_size=4, lr=0.1,
                      rng=np.random.default_rng(0), cancel=flag)  # fmt: skip
    assert info.value.steps == k
    assert all(p.grad is None for p in module.parameters())  # it was the fused path
    event = threading.Event()  # and an unset event lets all 6 steps run
    trainer.train(get_flat_params(module), x, y, epochs=2, batch_size=4, lr=0.1,
                  rng=np.random.default_rng(0), cancel=event)  # fmt: skip


def test_divergence_and_skipped_batches_read_as_on_the_autograd_path() -> None:
    rng = np.random.default_rng(9)
    x = (100 * rng.standard_normal((8, 1, 4, 4))).astype(np.float32)
    y = rng.integers(0, 3, size=8)
    errors = []
    for fused in (False, True):
        module = _seeded(_Chain, 9)
        with pytest.raises(ValueError) as info:
            _run(module, x, y, fused=fused, lr=1e6, epochs=5)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    # Batches whose labels are all skipped (batch_size 1): NaN loss, no update, not counted.
    y2 = np.array([0, 1, IGNORE_INDEX, IGNORE_INDEX, 2, 0, 1, 2])
    module = _seeded(_Chain, 10)
    got, _ = _agree(module, x / 100, y2, batch_size=1, epochs=1)
    assert got.num_examples == 6 and np.isfinite(got.loss)
