"""A per-position classifier whose positions equal its classes ([B, T, C] with T == C) is
refused at export: the device reads the classes last, torch's cross_entropy from dimension 1,
so both paths would take the same labels and train different models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sdk.onnx_export import ExportError, export_training_artifacts


class _PerPosition(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.e = nn.Embedding(9, 4)
        self.l = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.l(self.e(x))  # [B, T, C]
        return out


def test_positions_equal_to_classes_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"outputs \[4, 5, 5\]: cross-entropy on the device"):
        export_training_artifacts(_PerPosition(5), torch.randint(0, 9, (4, 5)), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_other_per_position_outputs_still_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = export_training_artifacts(_PerPosition(3), torch.randint(0, 9, (4, 5)), tmp_path)
    assert result.manifest["y"]["shape"] == ["batch", 5]
