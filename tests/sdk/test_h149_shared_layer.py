"""A layer reachable by two paths (applied twice, or registered under two names): the export
leaves the caller's model as it was, and the exported step still trains it as torch does.

`torch.func.functional_call` on such a model left its parameters as the trace's FakeTensors
(pytorch/pytorch#164759: the shared slot is swapped twice and the placeholder "restored").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdk.onnx_export import export_training_artifacts
from sdk.ort import OrtTrainer
from tests.sdk.test_onnx_parity import TOL, Case, _batches, _ort_run, _rel, _torch_run


def _reused() -> nn.Module:
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    return nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(4, 2))


class _Aliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.b = self.a  # one module, two names
        self.c = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))
        return out


CASES = [
    Case("reused", _reused, (4,), "ce", "momentum"),
    Case("aliased", _Aliased, (4,), "mse", "sgd"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_export_leaves_a_model_with_a_shared_layer_usable(case: Case, tmp_path: Path) -> None:
    # Prepare
    torch.set_num_threads(1)
    model = case.build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = {n: id(p) for n, p in model.named_parameters()}
    x = torch.randn(5, *case.x_shape)
    with torch.no_grad():
        want = model(x)

    # Execute
    export_training_artifacts(
        model, torch.randn(4, *case.x_shape), tmp_path, loss=case.loss, optimizer=case.optimizer
    )

    # Assert: the same Parameter objects, plain tensors with their old values; forward runs.
    after = dict(model.named_parameters())
    assert list(after) == list(before)
    for name, p in after.items():
        assert type(p) is nn.Parameter and type(p.data) is torch.Tensor, name
        assert id(p) == ids[name]
        assert torch.equal(p.detach(), before[name]), name
        assert p.detach().numpy().shape == tuple(before[name].shape)
    assert isinstance(model, nn.Sequential) or model.a is model.b  # the sharing is kept
    with torch.no_grad():
        assert torch.equal(model(x), want)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_exported_step_trains_a_shared_layer_as_torch_does(case: Case, tmp_path: Path) -> None:
    # Prepare: one tensor per shared parameter in the spec (named_parameters' dedup), whose
    # gradient sums both uses.
    torch.set_num_threads(1)
    export_training_artifacts(
        case.build(),
        torch.randn(4, *case.x_shape),
        tmp_path,
        loss=case.loss,
        optimizer=case.optimizer,
    )
    trainer = OrtTrainer.from_dir(tmp_path)
    model = case.build()
    assert [e.name for e in trainer.spec.entries] == [n for n, _ in model.named_parameters()]
    start = [p.detach().numpy().copy() for p in model.parameters()]
    n_out = trainer.manifest.spec.entries[-1].shape[0]
    batches = _batches(case, n_out, steps=20, seed=1)

    # Execute
    want, want_losses = _torch_run(model, case, batches)
    got, got_losses = _ort_run(trainer, [p.copy() for p in start], batches)

    # Assert
    assert all(np.isfinite(w).all() for w in want)
    for g, w, s in zip(got, want, start, strict=True):
        assert _rel(g - s, w - s) < TOL
    assert _rel(np.array(got_losses), np.array(want_losses)) < TOL
