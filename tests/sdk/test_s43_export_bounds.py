"""`plume export` bounds its example batch (helper-353): `--batch-size 100000000` or
`--input-shape 100000,100000` ended in torch's allocator traceback. The batch only traces (the
exported batch dimension is dynamic), so a usage error names both flags, before any tracing and
with no folder made."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main
from sdk import onnx_export


def _no_trace(*args: object, **kwargs: object) -> None:
    raise AssertionError("traced a batch that is over the bounds")


@pytest.mark.parametrize(
    "flags, values",
    [
        (["--model", "mlp", "--batch-size", "100000000"], "78,400,000,000"),
        (["--model", "mlp", "--input-shape", "100000,100000"], "100,000,000,000"),
        (["--model", "digits_mlp", "--batch-size", "4097"], "262,208"),
    ],
)
def test_an_example_batch_over_the_bounds_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    values: str,
) -> None:
    monkeypatch.setattr(onnx_export, "export_training_artifacts", _no_trace)
    out = tmp_path / "art"
    assert main(["export", *flags, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plume export: error: --batch-size ") and err.count("\n") == 1, err
    assert f"is {values} input values" in err and "--input-shape" in err
    assert not out.exists()


def test_the_largest_batch_allowed_still_exports(tmp_path: Path) -> None:
    out = tmp_path / "art"
    code = main(["export", "--model", "digits_mlp", "--batch-size", "4096", "--out", str(out)])
    assert code == 0 and (out / "manifest.json").exists()
