"""A per-run, cross-process cache of the tests' ONNX exports: each distinct export is made once.

`export_training_artifacts` costs 2.5-10 s a call on this 2-core machine, and many test files
export the same models with the same arguments in their fixtures. `ExportCache.export` takes the
exporter's arguments, exports for real the first time a key is seen in this pytest run (by any
xdist worker), and hands every caller its own copy of the files (tests edit and swap them).

The key (`export_key`) is a SHA-256 over everything that determines the artifacts: the model's
classes (and the source files of those not from torch), repr, parameters, buffers (names,
dtypes, shapes, bytes), mode and hooks; the example inputs' dtypes, shapes and bytes; every
keyword argument; the source of the exporter (all of sdk/ and compression/, which it imports)
and the torch, onnx, onnxscript, onnxruntime, numpy and Python versions. When any of it cannot
be hashed safely (a hook, a class without a source file, an argument of another type), the key
is None and the call exports for real, uncached.

Tests whose subject is the exporter itself (reproducibility, byte-identical exports, error
paths, warnings, output) call `export_training_artifacts` directly, not through this cache.

The cache lives in the run's temporary directory (shared by the xdist workers of one run, see
`run_cache_dir`), never in the repository or the user's home: a clean run exports everything
once. tests/test_s66d_export_cache.py is the proof that a hit is byte-identical to an export.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import filelock
import pytest
import torch
from torch import nn

from compression import ModelSpec
from sdk.onnx_export import ExportResult, export_training_artifacts

ROOT = Path(__file__).resolve().parent.parent
# Everything the exporter imports from the project and that can shape its graphs or manifest.
_EXPORTER_SOURCES = ("sdk", "compression")
_VERSIONS = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy")
_SIGNATURE = inspect.signature(export_training_artifacts)
_POSITIONAL = ("model", "example_x", "out_dir")
# Bumped when the key's layout or the entry's layout changes.
_FORMAT = b"plume-test-export-cache/1"


def run_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache directory of this pytest run: the run's base temp under xdist (each worker's
    basetemp is a `popen-gwN` directory inside it), the process's base temp otherwise."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path = base / "plume-export-cache"
    path.mkdir(exist_ok=True)
    return path


def _source_digest() -> bytes:
    h = hashlib.sha256()
    for package in _EXPORTER_SOURCES:
        for path in sorted((ROOT / package).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    for name in _VERSIONS:
        h.update(f"{name}={metadata.version(name)}\0".encode())
    h.update(f"python={platform.python_version()}\0".encode())
    return h.digest()


def _tensor(h: Any, tensor: torch.Tensor) -> None:
    h.update(f"{tensor.dtype}{tuple(tensor.shape)}{tensor.requires_grad}\0".encode())
    t = tensor.detach().cpu().contiguous()
    # A byte view, so that dtypes numpy lacks (bfloat16) hash too.
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _has_hooks(module: nn.Module) -> bool:
    hooks = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
        "_load_state_dict_pre_hooks",
    )
    return any(getattr(module, name, None) for name in hooks)


def _model_digest(h: Any, model: nn.Module) -> bool:
    """Hash `model` into `h`; False when a part of it cannot be hashed safely."""
    if torch.nn.modules.module._global_forward_hooks or (
        torch.nn.modules.module._global_forward_pre_hooks
    ):
        return False
    h.update(f"default_dtype={torch.get_default_dtype()}\0".encode())
    h.update(repr(model).encode() + b"\0")
    sources: set[str] = set()
    for path, module in model.named_modules(remove_duplicate=False):
        cls = type(module)
        if _has_hooks(module):
            return False
        h.update(f"{path}:{cls.__module__}.{cls.__qualname__}:{module.training}\0".encode())
        for klass in cls.__mro__:
            if klass.__module__.split(".")[0] in ("torch", "builtins"):
                continue
            try:
                source = inspect.getsourcefile(klass)
            except TypeError:
                return False
            if source is None or not Path(source).is_file():
                return False
            sources.add(source)
        # Plain attributes a forward may read (a flag, a size): only simple values are hashed.
        for name, value in sorted(vars(module).items()):
            if name.startswith("_") or name == "training":
                continue
            if value is None or isinstance(value, (bool, int, float, str, tuple)):
                h.update(f"{name}={value!r}\0".encode())
            elif isinstance(value, torch.Tensor):
                _tensor(h, value)
            else:
                return False
    for source in sorted(sources):
        h.update(source.encode() + b"\0" + Path(source).read_bytes() + b"\0")
    # remove_duplicate=False: a shared (tied) parameter is hashed under each of its names.
    for name, param in model.named_parameters(remove_duplicate=False):
        h.update(f"param {name}\0".encode())
        _tensor(h, param)
    for name, buf in model.named_buffers(remove_duplicate=False):
        h.update(f"buffer {name}\0".encode())
        _tensor(h, buf)
    return True


def export_key(model: nn.Module, example_x: torch.Tensor, **kwargs: Any) -> str | None:
    """The cache key of ``export_training_artifacts(model, example_x, out, **kwargs)``, or None
    when one of its inputs cannot be hashed safely (such a call is not cached)."""
    h = hashlib.sha256(_FORMAT + b"\0" + _source_digest())
    if not isinstance(example_x, torch.Tensor) or not _model_digest(h, model):
        return None
    h.update(b"example_x\0")
    _tensor(h, example_x)
    # With the exporter's defaults filled in: `momentum=0.9` given or left out is one key.
    try:
        bound = _SIGNATURE.bind(model, example_x, "out", **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    arguments = {k: v for k, v in bound.arguments.items() if k not in _POSITIONAL}
    for name, value in sorted(arguments.items()):
        h.update(f"kw {name}\0".encode())
        if isinstance(value, torch.Tensor):
            _tensor(h, value)
        elif value is None or isinstance(value, (bool, int, float, str)):
            h.update(f"{type(value).__name__}:{value!r}\0".encode())
        else:
            return None
    return h.hexdigest()


def example(*shape: int, vocab: int | None = None, seed: int = 0) -> torch.Tensor:
    """An example batch drawn from its own generator (torch's global RNG is left alone): float32
    N(0, 1), or int64 ids in [0, vocab). Fixtures that export the same model with the same
    `example` share one cache entry across test files."""
    generator = torch.Generator().manual_seed(seed)
    if vocab is not None:
        return torch.randint(0, vocab, shape, generator=generator)
    return torch.randn(*shape, generator=generator)


class ExportCache:
    """`export` stands in for `export_training_artifacts` in fixtures; `hits` and `misses`
    count this process's calls (an uncachable call counts as a miss)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.hits = 0
        self.misses = 0

    def export(
        self,
        model: nn.Module,
        example_x: torch.Tensor,
        out_dir: str | os.PathLike[str],
        **kwargs: Any,
    ) -> ExportResult:
        """As ``export_training_artifacts(model, example_x, out_dir, **kwargs)``: the files are
        written to `out_dir` (a copy of this run's first export of the same key)."""
        key = export_key(model, example_x, **kwargs)
        if key is None:
            self.misses += 1
            return export_training_artifacts(model, example_x, out_dir, **kwargs)
        entry = self.directory / key
        with filelock.FileLock(str(self.directory / f"{key}.lock")):
            if entry.is_dir():
                self.hits += 1
            else:
                self.misses += 1
                staging = self.directory / f"{key}.{os.getpid()}.tmp"
                shutil.rmtree(staging, ignore_errors=True)
                try:
                    export_training_artifacts(model, example_x, staging, **kwargs)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                staging.rename(entry)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(entry.iterdir()):
            shutil.copyfile(path, out / path.name)
        manifest = json.loads((out / "manifest.json").read_text())
        return ExportResult(out, manifest, ModelSpec.from_json(manifest["spec"]))


__all__ = ["ExportCache", "example", "export_key", "run_cache_dir"]
