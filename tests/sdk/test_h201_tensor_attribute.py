"""A model keeping a constant tensor as a plain attribute is refused with a message naming the
attribute and the fix (helper-194's finding: torch's AssertionError named neither)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sdk.onnx_export import ExportError, export_training_artifacts


class _Attention(nn.Module):
    def __init__(self, mask_in_forward: bool) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)
        self.mask_in_forward = mask_in_forward
        if not mask_in_forward:
            self.mask = torch.tril(torch.ones(5, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.tril(torch.ones(5, 5)) if self.mask_in_forward else self.mask
        h = self.q(x)
        a = (h @ h.transpose(1, 2)).masked_fill(mask == 0, -1e9).softmax(-1)
        out: torch.Tensor = self.head((a @ h).mean(1))
        return out


def test_a_plain_tensor_attribute_is_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"plain attributes \(mask\)") as info:
        export_training_artifacts(_Attention(False), torch.randn(2, 5, 4), tmp_path / "a")
    assert "inside forward()" in str(info.value)
    assert "FakeTensors" not in str(info.value)


def test_the_mask_built_in_forward_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    export_training_artifacts(_Attention(True), torch.randn(2, 5, 4), tmp_path / "b")
    assert (tmp_path / "b" / "manifest.json").is_file()
