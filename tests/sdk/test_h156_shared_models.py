"""Shared-layer models that a deep copy cannot stand in for: the export traces the model itself
and puts every parameter, buffer and tensor attribute back afterwards (`sdk.trainer.restored_slots`).

dc24925 traced a `copy.deepcopy` of a model with a layer or parameter under two names, to work
around pytorch/pytorch#164759 (functional_call left the caller's model holding FakeTensors). The
copy broke models that exported before: a lambda or forward hook closing over `self` reads the
original's layer (an opaque FakeTensor AssertionError), a submodule's own `__deepcopy__` can untie
a tied weight (the same), and an attribute that cannot be copied (a lock) refused the export.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdk.onnx_export import ExportError, export_training_artifacts
from sdk.ort import OrtTrainer


class _Closure(nn.Module):
    """A layer under two names, one use reached through a lambda closing over `self`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.b = self.a
        self.head = nn.Linear(4, 3)
        self.first = lambda t: torch.tanh(self.a(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.tanh(self.b(self.first(x))))
        return out


class _Hooked(nn.Module):
    """A layer under two names with a gating forward hook closing over `self`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.b = self.a
        self.gate = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)
        self.a.register_forward_hook(lambda mod, i, out: out * torch.sigmoid(self.gate(i[0])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))
        return out


class _Head(nn.Linear):
    def __deepcopy__(self, memo: dict[int, object]) -> _Head:  # rebuild: unties a tied weight
        new = _Head(self.in_features, self.out_features)
        new.load_state_dict(self.state_dict())
        return new


class _Tied(nn.Module):
    """A weight tied between an embedding and a head whose class has its own __deepcopy__."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(6, 4)
        self.mix = nn.Linear(12, 4)
        self.head = _Head(4, 6)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.tanh(self.mix(self.embed(x).flatten(1))))
        return out


class _Locked(nn.Module):
    """A layer under two names on a model holding a lock (copy.deepcopy cannot copy it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 4)
        self.alias = self.shared
        self.head = nn.Linear(4, 3)
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            out: torch.Tensor = self.head(torch.tanh(self.alias(torch.tanh(self.shared(x)))))
        return out


def _weight_norm_reused() -> nn.Module:
    """torch's hook-based weight norm (deprecated, still shipped) on a layer applied twice."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shared = torch.nn.utils.weight_norm(nn.Linear(4, 4))
    return nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(4, 3))


def _data(build: Callable[[], nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    if build is _Tied:
        x = torch.randint(0, 6, (8, 3), generator=torch.Generator().manual_seed(1))
        return x, torch.randint(0, 6, (8,), generator=torch.Generator().manual_seed(2))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    return x, torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(2))


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor], x: torch.Tensor) -> None:
    """The same plain Parameters with their values, and a forward pass that runs."""
    after = dict(model.named_parameters())
    assert list(after) == list(before)
    for name, p in after.items():
        assert type(p) is nn.Parameter and type(p.data) is torch.Tensor, name
        assert torch.equal(p.detach(), before[name]), name
    with torch.no_grad():
        out = model(x)
    assert type(out) is torch.Tensor and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("build", [_Closure, _Hooked, _Tied, _Locked], ids=lambda b: b.__name__)
def test_a_shared_layer_model_a_copy_cannot_stand_in_for_exports_and_trains_as_torch(
    build: Callable[[], nn.Module], tmp_path: Path
) -> None:
    # Prepare
    torch.set_num_threads(1)
    x, y = _data(build)
    model = build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # Execute
    export_training_artifacts(model, x[:4], tmp_path)
    trainer = OrtTrainer.from_dir(tmp_path)
    start = torch.cat([p.detach().reshape(-1) for p in build().parameters()]).numpy()
    got = trainer.train(
        start.copy(), x.numpy(), y.numpy(), epochs=1, batch_size=8, lr=0.5,
        rng=np.random.default_rng(0),
    ).params  # fmt: skip
    ref = build()
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    nn.functional.cross_entropy(ref(x), y).backward()
    opt.step()
    want = torch.cat([p.detach().reshape(-1) for p in ref.parameters()]).numpy()

    # Assert: the caller's model as it was, and the exported step is torch's
    _assert_untouched(model, before, x)
    assert np.abs(want - start).max() > 1e-3  # the step moves the parameters
    assert np.linalg.norm((got - start) - (want - start)) / np.linalg.norm(want - start) < 1e-5


def test_a_reused_weight_norm_layer_is_refused_clearly_and_left_usable(tmp_path: Path) -> None:
    # Prepare
    torch.set_num_threads(1)
    model = _weight_norm_reused()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))

    # Execute / Assert: the exporter's op that has no translation, named; not an internal error
    with pytest.raises(ExportError, match="no ONNX translation"):
        export_training_artifacts(model, x, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    _assert_untouched(model, before, x)
    assert type(model[0].weight) is torch.Tensor  # the hook's computed weight, not a FakeTensor
