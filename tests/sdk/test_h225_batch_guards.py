"""`export_training_artifacts` checks the graphs against torch on the other side of each
assumption the tracer made about the batch size (helper-221's finding: a forward with
``if x.shape[0] >= 8`` exported at a batch of 4 passed the checks at batches 1 and 5, and a
device then trained another model than torch at a batch of 32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import sdk.onnx_export as onnx_export
from sdk.onnx_export import ExportError, export_training_artifacts


class _CentreFrom(nn.Module):
    """Centres the hidden layer over the batch once the batch holds `at` examples."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if x.shape[0] >= self.at:
            h = h - h.mean(0, keepdim=True)
        out: torch.Tensor = self.b(h)
        return out


class _HarmlessBranch(nn.Module):
    """Branches on the batch size, but both branches compute the same numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.a(x)
        if x.shape[0] >= 8:
            out = out * 1.0
        return out


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_branch_past_the_example_batch_is_refused(tmp_path: Path, optimizer: str) -> None:
    torch.manual_seed(0)
    with pytest.raises(ExportError) as info:
        export_training_artifacts(
            _CentreFrom(8), torch.randn(4, 8), tmp_path / "out", optimizer=optimizer
        )
    message = str(info.value)
    assert "at a batch of 8 differs from torch's" in message
    assert "traced at a batch of 4, where the tracer assumed batch < 8" in message
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_branch_far_past_the_common_batch_sizes_is_refused(tmp_path: Path) -> None:
    """The size checked comes from the guard itself, not from a fixed list."""
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"at a batch of 100 differs from torch's"):
        export_training_artifacts(_CentreFrom(100), torch.randn(4, 8), tmp_path / "out")


def test_harmless_guard_exports_and_is_checked_at_its_other_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[int, str]] = []
    real = onnx_export._batch_guard_sizes

    def spy(*args: object) -> dict[int, str]:
        sizes = real(*args)  # type: ignore[arg-type]
        seen.append(sizes)
        return sizes

    monkeypatch.setattr(onnx_export, "_batch_guard_sizes", spy)
    torch.manual_seed(0)
    export_training_artifacts(_HarmlessBranch(), torch.randn(4, 8), tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").exists()
    assert seen and seen[0] == {8: "batch < 8"}


def test_unreadable_guards_fall_back_to_common_batch_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(*_args: object) -> dict[int, str]:
        raise RuntimeError("the tracer's internals changed")

    monkeypatch.setattr(onnx_export, "_batch_guard_sizes", unreadable)
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"at a batch of 32 differs from torch's"):
        export_training_artifacts(_CentreFrom(32), torch.randn(4, 8), tmp_path / "out")
    # A model without such a branch still exports.
    model = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 3))
    export_training_artifacts(model, torch.randn(4, 8), tmp_path / "plain")
    assert (tmp_path / "plain" / "manifest.json").exists()
