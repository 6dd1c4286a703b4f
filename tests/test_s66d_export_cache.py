"""tests/_export_cache.py: a hit is the bytes of a fresh export, and every input moves the key."""

from __future__ import annotations

import importlib.metadata
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import tests._export_cache as export_cache_module
from sdk.onnx_export import ExportError, export_training_artifacts
from tests._export_cache import ExportCache, export_key, run_cache_dir

FILES = ("infer.onnx", "train_step.onnx", "manifest.json")


def _model(act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), act(), nn.Linear(8, 4))


def _x() -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(1))


def _bytes(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


def test_a_hit_hands_back_the_bytes_of_a_fresh_export_in_a_copy_of_its_own(
    tmp_path: Path,
) -> None:
    # Prepare
    cache = ExportCache(tmp_path / "cache")
    cache.directory.mkdir()

    # Execute: a fresh export, then the cache's miss and hit.
    fresh = export_training_artifacts(_model(), _x(), tmp_path / "fresh", optimizer="momentum")
    missed = cache.export(_model(), _x(), tmp_path / "miss", optimizer="momentum")
    after_miss = torch.get_rng_state()
    hit = cache.export(_model(), _x(), tmp_path / "hit", optimizer="momentum")
    after_hit = torch.get_rng_state()

    # Assert: the same files, manifest and spec; one export made, one handed back.
    assert (cache.misses, cache.hits) == (1, 1)
    assert _bytes(tmp_path / "miss") == _bytes(tmp_path / "fresh") == _bytes(tmp_path / "hit")
    for result, out in ((missed, "miss"), (hit, "hit")):
        assert result.out_dir == tmp_path / out
        assert result.manifest == fresh.manifest
        assert result.spec == fresh.spec
    # A hit leaves torch's random state where an export does (both start from _model's seed;
    # the exporter forks the state), so a test draws the same numbers after a fixture whether
    # the fixture hit or missed.
    assert torch.equal(after_hit, after_miss)
    # Each caller's files are its own: a test that edits them changes no other copy.
    (tmp_path / "hit" / "train_step.onnx").write_bytes(b"swapped")
    cache.export(_model(), _x(), tmp_path / "again", optimizer="momentum")
    assert _bytes(tmp_path / "again") == _bytes(tmp_path / "fresh")
    assert (cache.misses, cache.hits) == (1, 2)


def test_a_failed_export_leaves_no_entry_and_raises_each_time(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    for _ in range(2):
        with pytest.raises(ExportError, match="unknown loss"):
            cache.export(_model(), _x(), tmp_path / "out", loss="hinge")
    assert cache.misses == 2
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".lock"]


def _with_weight(model: nn.Sequential) -> nn.Module:
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-6  # type: ignore[index,operator]
    return model


def _with_buffer(model: nn.Module) -> nn.Module:
    model.register_buffer("scale", torch.ones(1))
    return model


def _training_off(model: nn.Module) -> nn.Module:
    return model.eval()


def _frozen(model: nn.Sequential) -> nn.Module:
    model[0].bias.requires_grad_(False)
    return model


def _double(model: nn.Module) -> nn.Module:
    return model.double()


CHANGES: dict[str, tuple[Callable[[nn.Sequential], nn.Module], dict[str, Any]]] = {
    "one weight by 1e-6": (_with_weight, {}),
    "a buffer": (_with_buffer, {}),
    "eval mode": (_training_off, {}),
    "a frozen parameter": (_frozen, {}),
    "float64 parameters": (_double, {}),
    "loss": (lambda m: m, {"loss": "mse"}),
    "optimizer": (lambda m: m, {"optimizer": "momentum"}),
    "momentum": (lambda m: m, {"momentum": 0.5}),
    "model_name": (lambda m: m, {"model_name": "mlp"}),
    "example_y": (lambda m: m, {"example_y": torch.tensor([0, 1, 2, 3])}),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_each_input_of_the_export_moves_the_key(change: str) -> None:
    mutate, kwargs = CHANGES[change]
    base = export_key(_model(), _x())
    assert base is not None and base == export_key(_model(), _x())
    assert export_key(mutate(_model()), _x(), **kwargs) not in (None, base)


def test_an_argument_given_as_its_default_is_the_same_key() -> None:
    assert export_key(_model(), _x(), momentum=0.9, loss="ce") == export_key(_model(), _x())


def test_the_example_input_and_the_structure_move_the_key() -> None:
    base = export_key(_model(), _x())
    x = _x()
    x[0, 0] += 1e-6
    moved = {
        "x value": export_key(_model(), x),
        "x shape": export_key(_model(), _x()[:3]),
        "x dtype": export_key(_model(), _x().double()),
        "activation": export_key(_model(nn.Tanh), _x()),
        "layer option": export_key(
            nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 4)), _x()
        ),
    }
    assert None not in moved.values()
    assert len({base, *moved.values()}) == 1 + len(moved), moved


def test_the_exporters_source_and_the_library_versions_move_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a copy of the exporter's sources to edit.
    base = export_key(_model(), _x())
    for package in ("sdk", "compression"):
        shutil.copytree(export_cache_module.ROOT / package, tmp_path / package)
    monkeypatch.setattr(export_cache_module, "ROOT", tmp_path)
    assert export_key(_model(), _x()) == base
    # Execute / Assert: one byte more in a module the exporter imports.
    trainer = tmp_path / "sdk" / "trainer.py"
    trainer.write_bytes(trainer.read_bytes() + b"\n")
    edited = export_key(_model(), _x())
    assert edited not in (None, base)
    version = importlib.metadata.version
    for library in ("torch", "onnx", "onnxscript", "onnxruntime"):

        def other(name: str, library: str = library) -> str:
            return "0.0.0" if name == library else version(name)

        monkeypatch.setattr(importlib.metadata, "version", other)
        assert export_key(_model(), _x()) not in (None, edited), library


class _Scaled(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.linear = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.linear(x))


def test_what_cannot_be_hashed_is_not_cached() -> None:
    hooked = _model()
    hooked[0].register_forward_hook(lambda module, args, out: out * 2)
    assert export_key(hooked, _x()) is None
    # A function the forward calls: its behaviour is not in any hash.
    assert export_key(_Scaled(torch.tanh), _x()) is None
    assert export_key(_model(), _x(), model_name=["not", "a", "str"]) is None
    assert export_key(_model(), _x(), learning_rate=0.1) is None  # not the exporter's


class _Factory:
    def __init__(self, base: Path) -> None:
        self.base = base

    def getbasetemp(self) -> Path:
        return self.base


def test_the_cache_is_the_runs_and_shared_by_its_xdist_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = tmp_path / "pytest-7" / "popen-gw1"
    worker.mkdir(parents=True)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert run_cache_dir(_Factory(worker)) == tmp_path / "pytest-7" / "plume-export-cache"  # type: ignore[arg-type]
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert run_cache_dir(_Factory(worker)) == worker / "plume-export-cache"  # type: ignore[arg-type]
