"""The fused step's guards (helper-116's review of sdk/_fused.py): what it checks on every call,
which modules qualify (declared chains, no tracing), what it refuses, the pooling buffers it
keeps, and autograd's column-major input-gradient branch. Each case compares against the
autograd path (`fused=False`) bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobile_sim.models import MODELS, build_model
from sdk._fused import fused_chain
from sdk.flat import get_flat_params
from sdk.trainer import TorchTrainer, TrainingCancelled


def _data(n: int = 13, shape: tuple[int, ...] = (2, 8, 8), classes: int = 5, seed: int = 1) -> Any:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 5)
    )


def _seeded(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make()


def _train(trainer: TorchTrainer, x: np.ndarray, y: np.ndarray, **kw: Any) -> Any:
    for p in trainer.module.parameters():
        p.grad = None
    args = {"epochs": 2, "batch_size": 4, "lr": 0.05, "rng": np.random.default_rng(0), **kw}
    return trainer.train(get_flat_params(trainer.module), x, y, **args)


def _fused_ran(module: nn.Module) -> bool:
    return all(p.grad is None for p in module.parameters())


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _freeze(m: nn.Module) -> None:
    m[0].requires_grad_(False)


def _reflect(m: nn.Module) -> None:
    m[0].padding_mode = "reflect"


def _circular(m: nn.Module) -> None:
    m[0].padding_mode = "circular"


def _pool3(m: nn.Module) -> None:  # 8x8 -> 4x4 still, other windows
    m[2].kernel_size, m[2].padding = 3, 1


def _pool_ceil(m: nn.Module) -> None:  # an odd input would now round up
    m[2].ceil_mode = True
    m[2].kernel_size, m[2].stride = 3, 2  # 8x8 -> 4x4 only when rounding up


def _halve(m: nn.Module) -> None:
    lin = m[4]
    lin.forward = lambda h: F.linear(h, lin.weight, lin.bias) * 0.5


def _channels_last(m: nn.Module) -> None:
    m.to(memory_format=torch.channels_last)


def _scaled_parameter(m: nn.Module) -> None:
    class Scaled(nn.Parameter):
        pass

    m[4].bias = Scaled(m[4].bias.detach().clone())


CHANGES = {
    "freeze": _freeze,
    "reflect": _reflect,
    "circular": _circular,
    "pool3": _pool3,
    "pool_ceil": _pool_ceil,
    "instance_forward": _halve,
    "channels_last": _channels_last,
    "parameter_subclass": _scaled_parameter,
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_change_after_the_first_call_is_seen(name: str) -> None:
    # Prepare: two equal modules, one trainer on each path; one call each (the fused one
    # caches its chain), then the same change to both modules
    x, y = _data()
    auto, fused = _seeded(_cnn), _seeded(_cnn)
    t_auto, t_fused = TorchTrainer(auto, fused=False), TorchTrainer(fused)
    _train(t_auto, x, y)
    _train(t_fused, x, y)
    assert _fused_ran(fused) and _same(auto, fused)
    CHANGES[name](auto)
    CHANGES[name](fused)
    # Execute: the second call
    want = _train(t_auto, x, y, rng=np.random.default_rng(1))
    got = _train(t_fused, x, y, rng=np.random.default_rng(1))
    # Assert: the fused trainer fell back to autograd and trained what autograd trains
    assert not _fused_ran(fused)
    assert _same(auto, fused)
    np.testing.assert_array_equal(got.params, want.params)
    assert got.loss == want.loss


def test_the_zoo_chains_are_declared() -> None:
    # Every zoo model that took the fused path (traced, before) declares its chain; the
    # recurrent ones do not qualify
    qualified = {name for name in MODELS if fused_chain(build_model(name), onednn=True)}
    assert {"mnist_cnn", "mlp", "digits_mlp", "synthetic_lr"} <= qualified
    assert not any(name.startswith("shakespeare") for name in qualified)
    cnn = fused_chain(build_model("mnist_cnn"), onednn=False)
    assert cnn is not None
    assert [op.kind for op in cnn.ops] == [
        "conv", "pool", "relu", "conv", "pool", "relu", "flatten", "linear", "relu", "linear"
    ]  # fmt: skip
    mlp = fused_chain(build_model("mlp"), onednn=False)
    assert mlp is not None
    assert [op.kind for op in mlp.ops] == ["flatten", "linear", "relu", "linear", "relu", "linear"]


class _NoGradFeatures(nn.Module):
    """A frozen feature extractor: autograd trains only `fc`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.pool = nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.flat, self.fc = nn.Flatten(), nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.pool(self.relu(self.conv(x)))
        out: torch.Tensor = self.fc(self.flat(x))
        return out


class _Recorder(_NoGradFeatures):
    """Keeps its features (a side effect) and counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.features: torch.Tensor | None = None
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.flat(self.pool(self.relu(self.conv(x))))
        self.features = h
        self.calls += 1
        out: torch.Tensor = self.fc(h)
        return out


class _Flagged(_NoGradFeatures):
    """A Python flag read by forward."""

    use_relu = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.conv(x))
        if self.use_relu:
            h = self.relu(h)
        out: torch.Tensor = self.fc(self.flat(h))
        return out


class _Plain(_NoGradFeatures):
    """Exactly a chain, but not declared."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.flat(self.pool(self.relu(self.conv(x)))))
        return out


class _Declared(_Plain):
    def fused_layers(self) -> list[nn.Module]:
        return [nn.Sequential(self.conv, self.relu), self.pool, self.flat, self.fc]


@pytest.mark.parametrize("make", [_NoGradFeatures, _Recorder, _Flagged, _Plain])
def test_an_undeclared_custom_forward_trains_through_autograd(make: type[nn.Module]) -> None:
    x, y = _data()
    auto, fused = _seeded(make), _seeded(make)
    t_auto, t_fused = TorchTrainer(auto, fused=False), TorchTrainer(fused)
    want = _train(t_auto, x, y)
    got = _train(t_fused, x, y)
    assert fused_chain(fused, onednn=False) is None
    assert not _fused_ran(fused)
    np.testing.assert_array_equal(got.params, want.params)
    if isinstance(fused, _Recorder):
        assert type(fused.features) is torch.Tensor and fused.calls > 0
    if isinstance(fused, _Flagged):  # the flag is read on each call
        auto.use_relu = fused.use_relu = False
        want, got = _train(t_auto, x, y), _train(t_fused, x, y)
        np.testing.assert_array_equal(got.params, want.params)


def test_a_declared_chain_is_fused_as_autograd_trains_it() -> None:
    x, y = _data()
    auto, fused = _seeded(_Declared), _seeded(_Declared)
    want = _train(TorchTrainer(auto, fused=False), x, y)
    got = _train(TorchTrainer(fused), x, y)
    assert _fused_ran(fused)
    np.testing.assert_array_equal(got.params, want.params)
    assert got.loss == want.loss


class _DeclaredWhenPlain(_Flagged):
    def fused_layers(self) -> list[nn.Module] | None:
        return [self.conv, self.pool, self.relu, self.flat, self.fc] if self.use_relu else None


def test_a_declaration_is_read_on_every_call() -> None:
    # A module declaring its chain only while its flag holds: the flag flipped after a fused
    # call trains through autograd, and back again through the fused step
    x, y = _data()
    auto, fused = _seeded(_DeclaredWhenPlain), _seeded(_DeclaredWhenPlain)
    t_auto, t_fused = TorchTrainer(auto, fused=False), TorchTrainer(fused)
    for use_relu, fused_path in ((True, True), (False, False), (True, True)):
        auto.use_relu = fused.use_relu = use_relu
        want, got = _train(t_auto, x, y), _train(t_fused, x, y)
        assert _fused_ran(fused) == fused_path
        np.testing.assert_array_equal(got.params, want.params)


class _DeclaredThenScaled(_Declared):
    """Overrides forward (an extra op) but not the declaration it inherits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 0.5


class _DeclaredAgain(_DeclaredThenScaled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Plain.forward(self, x)

    def fused_layers(self) -> list[nn.Module]:
        return [self.conv, self.relu, self.pool, self.flat, self.fc]


def test_an_inherited_declaration_does_not_cover_an_overridden_forward() -> None:
    x, y = _data()
    for make, fused_path in ((_DeclaredThenScaled, False), (_DeclaredAgain, True)):
        auto, fused = _seeded(make), _seeded(make)
        want = _train(TorchTrainer(auto, fused=False), x, y)
        got = _train(TorchTrainer(fused), x, y)
        assert _fused_ran(fused) == fused_path
        np.testing.assert_array_equal(got.params, want.params)
    # a subclass that changes only __init__ keeps its parent's declaration
    assert fused_chain(type("Wider", (_Declared,), {})(), onednn=False) is not None


def test_a_sequential_with_its_forward_replaced_does_not_qualify() -> None:
    seq = _seeded(_cnn)
    assert fused_chain(seq, onednn=False) is not None
    seq.forward = lambda h: nn.Sequential.forward(seq, h) * 2  # type: ignore[method-assign]
    assert fused_chain(seq, onednn=False) is None


def test_a_backward_hook_on_the_loss_trains_through_autograd() -> None:
    x, y = _data(6, (4,), 3, seed=0)

    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    results, fired = [], []
    for fused in (False, True):
        trainer = TorchTrainer(_seeded(make), fused=fused)
        seen: list[int] = []
        trainer.loss_fn.register_full_backward_hook(lambda *a, seen=seen: seen.append(1))
        trainer.loss_fn.register_full_backward_pre_hook(lambda mod, go: (go[0] * 0.5,))
        results.append(_train(trainer, x, y, epochs=1, batch_size=3))
        fired.append(len(seen))
    assert fired == [2, 2]
    np.testing.assert_array_equal(results[1].params, results[0].params)


def _buffer_rows(trainer: TorchTrainer) -> list[int]:
    chain = trainer._chain
    assert chain is not None
    return sorted(len(b[0]) for b in chain._buffers.values())


def test_one_pooling_buffer_set_per_op_sized_to_the_largest_batch() -> None:
    # Prepare: two pooling layers; batches of 4 and 1, then 5 and 3, then 2
    x, y = _data()

    def make() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16, 5),
        )  # fmt: skip

    auto, fused = _seeded(make), _seeded(make)
    t_auto, t_fused = TorchTrainer(auto, fused=False), TorchTrainer(fused)
    largest = 0
    for batch in (4, 5, 2):
        largest = max(largest, batch)
        want = _train(t_auto, x, y, batch_size=batch)
        got = _train(t_fused, x, y, batch_size=batch)
        # Assert: one set per pooling op, as large as the largest batch so far; same result
        assert _buffer_rows(t_fused) == [largest] * 2
        np.testing.assert_array_equal(got.params, want.params)
    assert _fused_ran(fused)


class _CancelAfter:
    def __init__(self, k: int) -> None:
        self.k, self.reads = k, 0

    def is_set(self) -> bool:
        self.reads += 1
        return self.reads > self.k


def test_no_batch_is_kept_after_train_returns_or_is_cancelled() -> None:
    x, y = _data()
    trainer = TorchTrainer(_seeded(_cnn))
    start = get_flat_params(trainer.module)
    _train(trainer, x, y)
    chain = trainer._chain
    assert chain is not None and chain._saved == [] and chain._dlogits is None
    # A cancel between a step's forward and backward cannot happen; a diverged run can
    # leave the forward's tensors: lr inf is refused up front, so diverge with a huge lr.
    with pytest.raises(ValueError, match="diverged|NaN|inf"):
        trainer.train(start, x * 1e30, y, epochs=3, batch_size=4, lr=1e30,
                      rng=np.random.default_rng(0))  # fmt: skip
    assert trainer._chain is chain and chain._saved == [] and chain._dlogits is None
    with pytest.raises(TrainingCancelled):
        trainer.train(
            start, x, y, epochs=1, batch_size=4, lr=0.1,
            rng=np.random.default_rng(0), cancel=_CancelAfter(2),
        )  # fmt: skip
    assert chain._saved == [] and chain._dlogits is None


@pytest.mark.parametrize("batch_size", [1, 4])
def test_a_linear_layer_with_one_input_on_a_batch_of_one(batch_size: int) -> None:
    # autograd computes the input gradient of a [1, 1] input as (W^T g^T)^T (its column-major
    # branch of mm_mat1_backward), which rounds differently from g W
    x, y = _data(9, (4,), 3, seed=0)

    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 1), nn.Linear(1, 300), nn.Linear(300, 3))

    auto, fused = _seeded(make), _seeded(make)
    kw = {"epochs": 3, "batch_size": batch_size, "lr": 0.01}
    want = _train(TorchTrainer(auto, fused=False, fast_linear=False), x, y, **kw)
    got = _train(TorchTrainer(fused, fast_linear=False), x, y, **kw)
    assert _fused_ran(fused)
    np.testing.assert_array_equal(got.params, want.params)
