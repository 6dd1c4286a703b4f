"""Ids read through `F.one_hot` with no vocabulary to bound them are refused at export
(helper-s50's review, finding 4).

Torch's `one_hot` raises for an id outside [0, num_classes); its exported form (an equality
against `arange`) gives a row of zeros, and the export dropped torch's check. With no
`nn.Embedding` reading x, the manifest recorded no vocabulary, so the device trained silently
on id 12 of 10 where `TorchTrainer` refused it. The trace's run-time checks on the data
(`one_hot`'s asserts) are now refused unless a vocabulary is recorded (the device then refuses
ids past the embedding's rows itself, as `tests/sdk/test_h161_float_ids.py`'s models rely on).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from sdk import onnx_export
from sdk.onnx_export import ExportError, export_training_artifacts


class _OneHot(nn.Module):
    """Reads its ids [B, 6] through `F.one_hot` (10 classes), no embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6 * 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.a(nn.functional.one_hot(x.long(), 10).float().flatten(1))
        return out


def _refused_before_the_onnx_export(*args: object, **kwargs: object) -> None:
    raise AssertionError("the ONNX export ran for a trace the export refuses")


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
def test_ids_read_through_one_hot_without_a_vocabulary_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    # Prepare: int64 ids, or float32 ids read through x.long() (no vocabulary either way)
    monkeypatch.setattr(torch.onnx, "export", _refused_before_the_onnx_export)
    torch.manual_seed(0)
    example = torch.randint(0, 10, (4, 6)).to(dtype)

    # Execute
    with pytest.raises(ExportError) as info:
        export_training_artifacts(_OneHot(), example, tmp_path / "o")

    # Assert: torch's checks are named, and so is the fix
    message = str(info.value)
    assert message.startswith(
        "the model's forward checks its values at run time (one_hot: Class values must be "
        "non-negative; one_hot: Class values must be smaller than num_classes), which the "
        "exported graph cannot do: "
    )
    assert "gives a row of zeros there" in message
    assert "Read token ids with an nn.Embedding that takes x itself" in message
    assert not (tmp_path / "o").exists()


class _CountFeatures(nn.Module):
    """Integer counts read as features (``x.float()``): no ids, no check torch makes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.a(x.float())
        return out


def test_integer_features_without_one_hot_still_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = export_training_artifacts(_CountFeatures(), torch.randint(0, 50, (4, 6)), tmp_path)
    assert result.manifest["x"] == {"name": "x", "dtype": "int64", "shape": ["batch", 6]}


class _Asserts(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert_async((x > 0).all(), "ids must be positive.")
        return x * 2


def test_the_refusal_names_any_check_in_the_trace() -> None:
    # `torch._assert_async` in a forward is a run-time check the export refuses in the same way
    gm = make_fx(_Asserts(), tracing_mode="symbolic")(torch.ones(2, 3))
    with pytest.raises(ExportError, match=r"run time \(ids must be positive\), which"):
        onnx_export._refuse_data_checks(gm)
